// Command routed is the CNI plugin a container runtime execs for every pod: a thin client
// of the node agent, which holds etcd and netlink warm and does all the work.
//
// It is one static executable (no interpreter, no shared libraries) so that it runs on
// any node, from kind to distroless hosts, and so that an exec costs a millisecond or two.
// Nothing here decides anything about a pod: it frames the request, sends it over the
// agent's unix socket and prints the answer.
//
// Wire format (the agent's side is cni/wire.py): the CNI_* environment as KEY=VALUE items
// sorted by key and separated by NUL, two NULs, then the network configuration exactly as
// read from stdin. The agent answers the exit code in decimal, a newline, the text to print.
//
// When the agent cannot be reached (or, for DEL, does not answer within delBudget):
//   - ADD, CHECK and GC answer CNI error 11 (try again later), naming the socket;
//   - STATUS answers error 50 (plugin not available);
//   - DEL succeeds: the request is spooled, in the same format, to
//     <spool_dir>/<containerid>-<ifname>-<unix time ns of the request>.req (written to a
//     dot-file, synced, renamed); the agent replays it, ordering it by that time against
//     later ADDs.
//
// VERSION is answered here, and a configuration that is not a JSON object is error 6.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	defaultSocket   = "/var/run/routed/cni.sock"
	defaultSpool    = "/var/lib/routed/cni-spool"
	fallbackVersion = "1.1.0"
	versionAnswer   = `{"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}`

	connectTimeout = 2 * time.Second
	// An ADD may wait for etcd; kubelet gives a new sandbox 4 min.
	answerBudget = 120 * time.Second
	// A DEL must never be stuck behind a wedged agent (kubelet gives it 2 min, and
	// retries forever): past this it is spooled instead.
	delBudget = 5 * time.Second
)

// CNI error codes (CNI spec, "Error").
const (
	errIO          = 5
	errDecoding    = 6
	errTryAgain    = 11
	errUnavailable = 50
)

// netConf is what the plugin itself needs of the network configuration.
type netConf struct {
	version, socket, spoolDir string
}

// parseConf reads cniVersion, agent_socket and spool_dir; anything but a JSON object is an
// error. A key whose value is not a string counts as absent (the agent judges the rest).
func parseConf(stdin []byte) (netConf, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &top); err != nil || top == nil {
		return netConf{}, errors.New("network configuration on stdin is not a JSON object")
	}
	str := func(key string) string {
		var s string
		if json.Unmarshal(top[key], &s) != nil {
			return ""
		}
		return s
	}
	return netConf{version: str("cniVersion"), socket: str("agent_socket"), spoolDir: str("spool_dir")}, nil
}

// resultVersion is the cniVersion to put in an error: the caller's, if it looks like one.
func resultVersion(version string) string {
	if version == "" || strings.Trim(version, "0123456789.") != "" {
		return fallbackVersion
	}
	return version
}

func cniError(version string, code int, msg string) []byte {
	out, _ := json.Marshal(struct {
		CNIVersion string `json:"cniVersion"`
		Code       int    `json:"code"`
		Msg        string `json:"msg"`
	}{resultVersion(version), code, msg})
	return out
}

// encodeRequest frames the CNI_* variables of env (KEY=VALUE strings) and stdin.
func encodeRequest(env []string, stdin []byte) []byte {
	var items []string
	for _, kv := range env {
		if strings.HasPrefix(kv, "CNI_") && strings.Contains(kv, "=") {
			items = append(items, kv)
		}
	}
	sort.Slice(items, func(i, j int) bool { return key(items[i]) < key(items[j]) })
	var b bytes.Buffer
	b.WriteString(strings.Join(items, "\x00"))
	b.WriteString("\x00\x00")
	b.Write(stdin)
	return b.Bytes()
}

func key(kv string) string { k, _, _ := strings.Cut(kv, "="); return k }

// parseAnswer splits the agent's answer into exit code and output.
func parseAnswer(answer []byte) (int, []byte, error) {
	head, body, _ := bytes.Cut(answer, []byte("\n"))
	if len(head) == 0 || len(bytes.Trim(head, "0123456789")) != 0 {
		return 0, nil, errors.New("the agent closed the connection without an answer")
	}
	code, err := strconv.Atoi(string(head))
	if err != nil {
		return 0, nil, fmt.Errorf("the agent answered exit code %q", head)
	}
	return code, body, nil
}

// spoolName orders spooled DELs by when they were made (nanoseconds in the name).
func spoolName(containerID, ifname string, unixNano int64) string {
	if r := []rune(containerID); len(r) > 64 {
		containerID = string(r[:64])
	}
	clean := func(s string) string { return strings.ReplaceAll(s, "/", "_") }
	return fmt.Sprintf("%s-%s-%d.req", clean(containerID), clean(ifname), unixNano)
}

// askAgent sends one request and waits for the answer until deadline.
func askAgent(path string, request []byte, deadline time.Time) (int, []byte, error) {
	conn, err := dial(path, deadline)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return 0, nil, err
	}
	if _, err := conn.Write(request); err != nil {
		return 0, nil, err
	}
	if err := conn.CloseWrite(); err != nil {
		return 0, nil, err
	}
	answer, err := io.ReadAll(conn)
	if err != nil {
		return 0, nil, err
	}
	return parseAnswer(answer)
}

// dial connects, waiting while the agent's accept queue is full: a unix socket answers
// EAGAIN at once then, and a busy agent is not a missing one.
func dial(path string, deadline time.Time) (*net.UnixConn, error) {
	giveUp := time.Now().Add(connectTimeout)
	if deadline.Before(giveUp) {
		giveUp = deadline
	}
	for {
		conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil || !errors.Is(err, syscall.EAGAIN) || time.Now().After(giveUp) {
			return conn, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reason is the short cause of a failed exchange, as an operator wants to read it.
func reason(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "no answer in time"
	}
	return err.Error()
}

// spool keeps a DEL for the agent to replay, written whole: a crash leaves no half file.
func spool(dir, name string, request []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "."+name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(request) // a short write (ENOSPC) is an error here
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil { // the rename itself must survive a crash
		d.Sync()
		d.Close()
	}
	return nil
}

func lookup(env []string, name, fallback string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
			return v
		}
	}
	return fallback
}

// run is the whole plugin: the exit code, with what to print written to stdout.
func run(env []string, stdin []byte, stdout io.Writer, now func() time.Time) int {
	command := lookup(env, "CNI_COMMAND", "")
	if command == "VERSION" {
		io.WriteString(stdout, versionAnswer)
		return 0
	}
	conf, err := parseConf(stdin)
	if err != nil { // no agent could help: not "try again later"
		stdout.Write(cniError(fallbackVersion, errDecoding, err.Error()))
		return 1
	}
	socket := conf.socket
	if socket == "" {
		socket = lookup(env, "ROUTED_CNI_SOCKET", defaultSocket)
	}
	budget := answerBudget
	if command == "DEL" {
		budget = delBudget
	}
	request := encodeRequest(env, stdin)
	asked := now()
	code, answer, err := askAgent(socket, request, asked.Add(budget))
	if err == nil {
		stdout.Write(answer)
		return code
	}
	why := reason(err)
	switch command {
	case "DEL":
		dir := conf.spoolDir
		if dir == "" {
			dir = defaultSpool
		}
		// Named by when the runtime asked, not when the wait ended: any ADD of the same
		// container that the agent sees after this DEL returned is later than the name.
		name := spoolName(lookup(env, "CNI_CONTAINERID", "unknown"), lookup(env, "CNI_IFNAME", "if"), asked.UnixNano())
		if serr := spool(dir, name, request); serr != nil {
			stdout.Write(cniError(conf.version, errIO, fmt.Sprintf(
				"routed agent unreachable at %s (%s) and the DEL could not be spooled: %v", socket, why, serr)))
			return 1
		}
		return 0
	case "STATUS":
		stdout.Write(cniError(conf.version, errUnavailable, fmt.Sprintf("routed agent is not reachable at %s: %s", socket, why)))
	default:
		stdout.Write(cniError(conf.version, errTryAgain, fmt.Sprintf("routed agent is not reachable at %s: %s", socket, why)))
	}
	return 1
}

func main() {
	stdin, err := io.ReadAll(os.Stdin)
	if err != nil {
		os.Stdout.Write(cniError(fallbackVersion, errIO, "reading the network configuration: "+err.Error()))
		os.Exit(1)
	}
	os.Exit(run(os.Environ(), stdin, os.Stdout, time.Now))
}
