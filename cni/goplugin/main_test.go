package main

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The agent parses exactly this (cni/wire.py); tests/integration/test_cni_plugin.py checks
// the same against the real agent.
func TestEncodeRequestSortsAndKeepsOnlyCNIVariables(t *testing.T) {
	env := []string{"HOME=/root", "CNI_IFNAME=eth0", "CNI_ARGS=K8S_POD_NAME=p;X=1", "CNI_COMMAND=ADD", "CNI_BROKEN"}
	got := encodeRequest(env, []byte(`{"a": "é"}`))
	want := "CNI_ARGS=K8S_POD_NAME=p;X=1\x00CNI_COMMAND=ADD\x00CNI_IFNAME=eth0\x00\x00{\"a\": \"é\"}"
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := encodeRequest(nil, []byte("{}")); string(got) != "\x00\x00{}" {
		t.Fatalf("no variables: got %q", got)
	}
}

func TestParseConf(t *testing.T) {
	conf, err := parseConf([]byte(`{"cniVersion": "1.0.0", "agent_socket": "/run/a \"b\".sock", "spool_dir": 5}`))
	if err != nil || conf.version != "1.0.0" || conf.socket != `/run/a "b".sock` || conf.spoolDir != "" {
		t.Fatalf("got %+v, %v", conf, err)
	}
	for _, bad := range []string{"", "{oops", "nonsense", "[]", "null", `"x"`, "{} {}"} {
		if _, err := parseConf([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestErrorsCarryASaneVersion(t *testing.T) {
	if got := string(cniError("0.4.0", 11, `a "q"`)); got != `{"cniVersion":"0.4.0","code":11,"msg":"a \"q\""}` {
		t.Fatal(got)
	}
	if got := string(cniError(`1.0"`, 6, "m")); !strings.Contains(got, `"cniVersion":"1.1.0"`) {
		t.Fatal(got)
	}
}

func TestParseAnswer(t *testing.T) {
	code, out, err := parseAnswer([]byte("7\n{\"code\": 7}\nmore"))
	if err != nil || code != 7 || string(out) != "{\"code\": 7}\nmore" {
		t.Fatalf("%d %q %v", code, out, err)
	}
	for _, bad := range []string{"", "\n", "x\n", "-1\n", "+1\n"} {
		if _, _, err := parseAnswer([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if code, out, err := parseAnswer([]byte("0")); err != nil || code != 0 || len(out) != 0 {
		t.Fatalf("a bare code: %d %q %v", code, out, err)
	}
}

func TestSpoolNameIsTheShimsNaming(t *testing.T) {
	long := strings.Repeat("a", 70)
	if got := spoolName(long+"/x", "et/h0", 1234); got != strings.Repeat("a", 64)+"-et_h0-1234.req" {
		t.Fatal(got)
	}
	if got := spoolName("c/1", "eth0", 5); got != "c_1-eth0-5.req" {
		t.Fatal(got)
	}
}

func TestDelWithoutAgentSpoolsWholeAndSucceeds(t *testing.T) {
	dir := t.TempDir()
	conf := `{"cniVersion": "1.0.0", "agent_socket": "` + dir + `/none.sock", "spool_dir": "` + dir + `/spool"}`
	env := []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0"}
	var out bytes.Buffer
	if code := run(env, []byte(conf), &out, func() time.Time { return time.Unix(0, 42) }); code != 0 || out.Len() != 0 {
		t.Fatalf("exit %d, printed %q", code, out.String())
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "spool"))
	if len(entries) != 1 || entries[0].Name() != "c1-eth0-42.req" {
		t.Fatalf("spool holds %v", entries)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "spool", entries[0].Name()))
	if !bytes.Equal(data, encodeRequest(env, []byte(conf))) {
		t.Fatalf("spooled %q", data)
	}
}

// A wedged agent: accepts, reads nothing, never answers. The clock is 1970, so every
// deadline is long past and the test does not wait.
func wedgedAgent(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
		}
	}()
	return path
}

func TestAWedgedAgentGetsDELSpooledUnderTheRequestsTime(t *testing.T) {
	sock, spoolDir := wedgedAgent(t), t.TempDir()
	conf := `{"cniVersion": "1.0.0", "agent_socket": "` + sock + `", "spool_dir": "` + spoolDir + `"}`
	calls := int64(0)
	clock := func() time.Time { calls++; return time.Unix(0, 42*calls) } // later on every call
	var out bytes.Buffer
	env := []string{"CNI_COMMAND=DEL", "CNI_CONTAINERID=c1", "CNI_IFNAME=eth0"}
	if code := run(env, []byte(conf), &out, clock); code != 0 || out.Len() != 0 {
		t.Fatalf("exit %d, printed %q", code, out.String())
	}
	entries, _ := os.ReadDir(spoolDir)
	if len(entries) != 1 || entries[0].Name() != "c1-eth0-42.req" {
		t.Fatalf("spool holds %v", entries)
	}
	out.Reset()
	env[0] = "CNI_COMMAND=ADD"
	if code := run(env, []byte(conf), &out, clock); code != 1 || !strings.Contains(out.String(), `"code":11`) ||
		!strings.Contains(out.String(), "no answer in time") {
		t.Fatalf("ADD: exit %d, printed %q", code, out.String())
	}
}

// A burst of pods fills the agent's accept queue; a unix socket then answers EAGAIN at
// once, and the plugin must wait for room instead of calling the agent away.
func TestDialWaitsForRoomInAFullAcceptQueue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil { // room for one pending connection
		t.Fatal(err)
	}
	first, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := net.Dial("unix", path); !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("the queue is not full (%v): this test would prove nothing", err)
	}
	done := make(chan error)
	go func() {
		conn, err := dial(path, time.Now().Add(time.Minute))
		if err == nil {
			conn.Close()
		}
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it meet the full queue first
	nfd, _, err := syscall.Accept(fd) // room for the plugin's connection
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(nfd)
	if err := <-done; err != nil {
		t.Fatalf("dial gave up on a busy agent: %v", err)
	}
}
