# AMI bake for titus-agent hosts: Amazon Linux 2023 and Ubuntu 24.04.
#   packer init . && packer build -var deb=../dist/titus-agent_<ver>_amd64.deb \
#     -var rpm=../dist/titus-agent-<ver>.x86_64.rpm .
# See README.md. Both images use cgroup v2 (their default).
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}
variable "containerd_version" {
  type    = string
  default = "2.2.9"
}
variable "runc_version" {
  type    = string
  default = "1.5.3" # RUNC_VERSION in scripts/deps.sh: the runc both test lanes build and run
}
variable "deb" {
  type        = string
  description = "titus-agent .deb built by `make deb` (Ubuntu)"
}
variable "rpm" {
  type        = string
  default     = ""
  description = "titus-agent .rpm (Amazon Linux); nfpm builds it with --packager rpm"
}

source "amazon-ebs" "al2023" {
  region        = var.region
  instance_type = "m6i.large"
  ssh_username  = "ec2-user"
  ami_name      = "titus-agent-al2023-{{timestamp}}"
  source_ami_filter {
    filters = {
      name                = "al2023-ami-2023.*-x86_64"
      virtualization-type = "hvm"
    }
    owners      = ["amazon"]
    most_recent = true
  }
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

source "amazon-ebs" "ubuntu" {
  region        = var.region
  instance_type = "m6i.large"
  ssh_username  = "ubuntu"
  ami_name      = "titus-agent-ubuntu-2404-{{timestamp}}"
  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
      virtualization-type = "hvm"
    }
    owners      = ["099720109477"] # Canonical
    most_recent = true
  }
  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
}

build {
  sources = ["source.amazon-ebs.al2023", "source.amazon-ebs.ubuntu"]

  # containerd 2.x and runc from upstream releases: the distributions ship 1.x.
  provisioner "shell" {
    environment_vars = ["CONTAINERD_VERSION=${var.containerd_version}", "RUNC_VERSION=${var.runc_version}"]
    execute_command  = "sudo -E sh -eux '{{ .Path }}'"
    script           = "install-containerd.sh"
  }

  provisioner "file" {
    only        = ["amazon-ebs.ubuntu"]
    source      = var.deb
    destination = "/tmp/titus-agent.deb"
  }
  provisioner "shell" {
    only   = ["amazon-ebs.ubuntu"]
    inline = ["sudo apt-get install -y /tmp/titus-agent.deb"]
  }

  provisioner "file" {
    only        = ["amazon-ebs.al2023"]
    source      = var.rpm
    destination = "/tmp/titus-agent.rpm"
  }
  provisioner "shell" {
    only   = ["amazon-ebs.al2023"]
    inline = ["sudo dnf install -y /tmp/titus-agent.rpm", "sudo groupadd --system -f titus", "sudo systemctl enable titus-agent.socket titus-agent.service"]
  }

  # Production settings: ec2 provider, real IMDS upstream. Nothing is
  # started during the bake; units start on the instance's first boot.
  provisioner "shell" {
    inline = [
      "sudo sed -i 's/^  provider: none/  provider: ec2/; s#^  upstream: \"\"#  upstream: http://169.254.169.254#' /etc/titus-agent/agent.yaml",
      "sudo titus-agent config check --config /etc/titus-agent/agent.yaml",
      "systemctl is-enabled containerd.service titus-agent.socket titus-agent.service",
      "test \"$(stat -fc %T /sys/fs/cgroup)\" = cgroup2fs",
    ]
  }
}
