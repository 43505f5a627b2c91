package metadataproxy

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Header names of IMDSv2.
const (
	hdrToken    = "X-Aws-Ec2-Metadata-Token"
	hdrTokenTTL = "X-Aws-Ec2-Metadata-Token-Ttl-Seconds"
	maxTokenTTL = 21600
)

// taskView is everything a task's metadata is made from.
type taskView struct {
	spec      task.Spec
	net       task.NetworkAttachment
	requireV2 bool
	creds     *roleCreds // nil without a role
	started   time.Time
}

// handler serves one task's metadata; it is bound to that task's listener.
type handler struct {
	svc *Service
	tv  *taskView
}

// statusWriter remembers the answer's class and status for the metrics.
type statusWriter struct {
	http.ResponseWriter
	class string
	code  int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// count labels the request with its class (metrics.Metadata*).
func (h *handler) count(w http.ResponseWriter, class string) {
	if sw, ok := w.(*statusWriter); ok {
		sw.class = class
	}
}

// observe records one answered request.
func (h *handler) observe(sw *statusWriter, start time.Time) {
	m := h.svc.cfg.Metrics
	if m == nil {
		return
	}
	class := sw.class
	if class == "" {
		class = metrics.MetadataDenied
	}
	m.MetadataRequests.WithLabelValues(class).Inc()
	m.MetadataResponses.WithLabelValues(class, strconv.Itoa(sw.code)).Inc()
	m.MetadataLatency.WithLabelValues(class).Observe(time.Since(start).Seconds())
}

func text(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Server", "EC2ws")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body))
}

func (h *handler) notFound(w http.ResponseWriter) {
	h.count(w, metrics.MetadataDenied)
	text(w, http.StatusNotFound, "404 - Not Found\n")
}

// cleanPath refuses anything a path-traversal attempt could hide in.
func cleanPath(raw string) (string, bool) {
	if strings.Contains(raw, "..") || strings.Contains(raw, "//") || strings.ContainsAny(raw, "\\\x00%") {
		return "", false
	}
	p := path.Clean("/" + raw)
	if strings.HasSuffix(raw, "/") && p != "/" {
		p += "/"
	}
	return p, true
}

func (h *handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: rw, code: http.StatusOK}
	defer h.observe(sw, time.Now())
	h.serve(sw, r)
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) {
	p, ok := cleanPath(r.URL.EscapedPath())
	if !ok {
		h.count(w, metrics.MetadataDenied)
		text(w, http.StatusBadRequest, "400 - Bad Request\n")
		return
	}
	now := h.svc.now()
	if p == "/latest/api/token" {
		h.token(w, r, now)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.count(w, metrics.MetadataDenied)
		text(w, http.StatusMethodNotAllowed, "405 - Method Not Allowed\n")
		return
	}
	if tok := r.Header.Get(hdrToken); tok != "" {
		if err := h.svc.tokens.check(tok, h.tv.spec.ID, now); err != nil {
			h.count(w, metrics.MetadataDenied)
			text(w, http.StatusUnauthorized, "401 - Unauthorized\n")
			return
		}
	} else if h.tv.requireV2 || h.svc.cfg.RequireV2 {
		h.count(w, metrics.MetadataDenied)
		text(w, http.StatusUnauthorized, "401 - Unauthorized\n")
		return
	}
	h.serveGet(w, r, p)
}

func (h *handler) token(w http.ResponseWriter, r *http.Request, now time.Time) {
	h.count(w, metrics.MetadataToken)
	if r.Method != http.MethodPut {
		text(w, http.StatusMethodNotAllowed, "405 - Method Not Allowed\n")
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		text(w, http.StatusForbidden, "403 - Forbidden\n")
		return
	}
	ttl, err := strconv.Atoi(r.Header.Get(hdrTokenTTL))
	if err != nil || ttl < 1 || ttl > maxTokenTTL {
		text(w, http.StatusBadRequest, "400 - Bad Request\n")
		return
	}
	w.Header().Set(hdrTokenTTL, strconv.Itoa(ttl))
	text(w, http.StatusOK, h.svc.tokens.issue(h.tv.spec.ID, time.Duration(ttl)*time.Second, now))
}

// listing renders an IMDS directory: one entry per line, dirs end in "/".
func listing(entries ...string) string { return strings.Join(entries, "\n") }

func (h *handler) serveGet(w http.ResponseWriter, r *http.Request, p string) {
	tv := h.tv
	n := tv.net
	mac := strings.ToLower(n.MAC)
	macBase := "/latest/meta-data/network/interfaces/macs/" + mac + "/"
	ident := func(body string) { h.count(w, metrics.MetadataIdentity); text(w, http.StatusOK, body) }
	switch p {
	case "/":
		ident(listing("latest"))
	case "/latest/", "/latest":
		ident(listing("dynamic", "meta-data"))
	case "/latest/meta-data/", "/latest/meta-data":
		entries := []string{"ami-id", "hostname", "iam/", "instance-id", "instance-type", "local-hostname", "local-ipv4", "mac", "network/", "placement/", "security-groups"}
		ident(listing(entries...))
	case "/latest/meta-data/instance-id":
		ident(tv.spec.ID)
	case "/latest/meta-data/local-ipv4":
		ident(n.IPv4)
	case "/latest/meta-data/mac":
		ident(mac)
	case "/latest/meta-data/hostname", "/latest/meta-data/local-hostname":
		ident(hostname(tv))
	case "/latest/meta-data/security-groups":
		ident(strings.Join(n.SecurityGroupIDs, "\n"))
	case "/latest/meta-data/placement/":
		ident(listing("availability-zone", "region"))
	case "/latest/meta-data/placement/availability-zone":
		ident(firstNonEmpty(n.AvailabilityZone, h.svc.cfg.AvailabilityZone))
	case "/latest/meta-data/placement/region":
		ident(firstNonEmpty(n.Region, h.svc.cfg.Region))
	case "/latest/meta-data/network/":
		ident(listing("interfaces/"))
	case "/latest/meta-data/network/interfaces/":
		ident(listing("macs/"))
	case "/latest/meta-data/network/interfaces/macs/":
		ident(listing(mac + "/"))
	case macBase:
		ident(listing("device-number", "local-ipv4s", "mac", "security-group-ids", "subnet-id", "vpc-id"))
	case macBase + "device-number":
		ident(strconv.Itoa(n.DeviceIndex))
	case macBase + "local-ipv4s":
		ident(n.IPv4)
	case macBase + "mac":
		ident(mac)
	case macBase + "security-group-ids":
		ident(strings.Join(n.SecurityGroupIDs, "\n"))
	case macBase + "subnet-id":
		ident(n.SubnetID)
	case macBase + "vpc-id":
		ident(n.VPCID)
	case "/latest/meta-data/iam/":
		if tv.creds == nil {
			h.notFound(w)
			return
		}
		ident(listing("info", "security-credentials/"))
	case "/latest/meta-data/iam/info":
		h.iamInfo(w)
	case "/latest/meta-data/iam/security-credentials/", "/latest/meta-data/iam/security-credentials":
		if tv.creds == nil {
			h.notFound(w)
			return
		}
		h.count(w, metrics.MetadataCredentials)
		text(w, http.StatusOK, roleName(tv.spec.IAMRoleARN))
	case "/latest/dynamic/", "/latest/dynamic":
		ident(listing("instance-identity/"))
	case "/latest/dynamic/instance-identity/":
		ident(listing("document", "signature"))
	case "/latest/dynamic/instance-identity/document":
		doc, _ := h.identityDocument()
		h.count(w, metrics.MetadataIdentity)
		w.Header().Set("Content-Type", "text/plain")
		w.Write(doc)
	case "/latest/dynamic/instance-identity/signature":
		doc, _ := h.identityDocument()
		ident(base64.StdEncoding.EncodeToString(ed25519.Sign(h.svc.key, doc)))
	default:
		if rest, ok := strings.CutPrefix(p, "/latest/meta-data/iam/security-credentials/"); ok {
			h.credentials(w, r, rest)
			return
		}
		if rel, ok := strings.CutPrefix(p, "/latest/meta-data/"); ok && slices.Contains(h.svc.cfg.UpstreamAllowlist, rel) {
			h.count(w, metrics.MetadataProxied)
			body, code := h.svc.upstream.get(r.Context(), "/latest/meta-data/"+rel)
			text(w, code, body)
			return
		}
		h.notFound(w)
	}
}

func hostname(tv *taskView) string {
	if tv.net.IPv4 == "" {
		return tv.spec.ID
	}
	return "ip-" + strings.ReplaceAll(tv.net.IPv4, ".", "-") + ".ec2.internal"
}

func roleName(arn string) string {
	i := strings.LastIndex(arn, "/")
	return arn[i+1:]
}

func (h *handler) iamInfo(w http.ResponseWriter) {
	if h.tv.creds == nil {
		h.notFound(w)
		return
	}
	h.count(w, metrics.MetadataCredentials)
	b, _ := json.MarshalIndent(map[string]string{
		"Code":               "Success",
		"LastUpdated":        h.tv.started.UTC().Format(time.RFC3339),
		"InstanceProfileArn": strings.Replace(h.tv.spec.IAMRoleARN, ":role/", ":instance-profile/", 1),
		"InstanceProfileId":  "AIPA" + strings.ToUpper(shortID(h.tv.spec.ID)),
	}, "", "  ")
	text(w, http.StatusOK, string(b))
}

func (h *handler) credentials(w http.ResponseWriter, r *http.Request, role string) {
	tv := h.tv
	h.count(w, metrics.MetadataCredentials)
	if tv.creds == nil || role != roleName(tv.spec.IAMRoleARN) {
		text(w, http.StatusNotFound, "404 - Not Found\n")
		return
	}
	c, err := tv.creds.get(r.Context())
	if err != nil {
		h.svc.log.Warn("credentials unavailable", "task", tv.spec.ID, "role", tv.spec.IAMRoleARN, "err", err)
		text(w, http.StatusServiceUnavailable, "503 - credentials are temporarily unavailable\n")
		return
	}
	h.svc.audit.Info("credentials served", "task", tv.spec.ID, "role", tv.spec.IAMRoleARN,
		"accessKeyId", c.AccessKeyID, "expiration", c.Expiration, "remote", r.RemoteAddr)
	b, _ := json.MarshalIndent(map[string]string{
		"Code":            "Success",
		"LastUpdated":     c.LastUpdated.Format(time.RFC3339),
		"Type":            "AWS-HMAC",
		"AccessKeyId":     c.AccessKeyID,
		"SecretAccessKey": c.SecretAccessKey,
		"Token":           c.SessionToken,
		"Expiration":      c.Expiration.UTC().Format(time.RFC3339),
	}, "", "  ")
	text(w, http.StatusOK, string(b))
}

func (h *handler) identityDocument() ([]byte, error) {
	tv := h.tv
	d := IdentityDocument{
		InstanceID: tv.spec.ID, TaskID: tv.spec.ID, PrivateIP: tv.net.IPv4,
		AvailabilityZone: firstNonEmpty(tv.net.AvailabilityZone, h.svc.cfg.AvailabilityZone),
		Region:           firstNonEmpty(tv.net.Region, h.svc.cfg.Region),
		AccountID:        h.svc.cfg.AccountID, HostInstanceID: h.svc.cfg.HostInstanceID,
		PendingTime: tv.started.UTC().Truncate(time.Second), Version: "2017-09-30",
	}
	return json.MarshalIndent(d, "", "  ")
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func shortID(s string) string {
	s = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' {
			return r
		}
		return -1
	}, s)
	if len(s) > 17 {
		s = s[:17]
	}
	return s
}
