package check

import (
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	m, err := ParseMetrics(`# HELP nowconnect_tcp_bytes_total Bytes carried.
# TYPE nowconnect_tcp_bytes_total counter
nowconnect_tcp_bytes_total{direction="c2a",connector="addomain"} 73
nowconnect_tcp_bytes_total{direction="a2c",connector="addomain"} 2.1714e+04 1700000000000
nowconnect_agents_connected{connector="we\"ird\\name"} 1
go_goroutines 12
`)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := m.Value("nowconnect_tcp_bytes_total", map[string]string{"direction": "a2c", "connector": "addomain"}); !ok || v != 21714 {
		t.Errorf("a2c %v %v", v, ok)
	}
	if v, ok := m.Value("nowconnect_tcp_bytes_total", map[string]string{"connector": "addomain"}); !ok || v != 21714+73 {
		t.Errorf("sum over directions %v %v", v, ok)
	}
	if v, ok := m.Value("nowconnect_agents_connected", map[string]string{"connector": `we"ird\name`}); !ok || v != 1 {
		t.Errorf("escaped label %v %v", v, ok)
	}
	if _, ok := m.Value("nowconnect_agents_connected", map[string]string{"connector": "other"}); ok {
		t.Error("a series that does not exist was found")
	}
	for _, bad := range []string{`x{a="1"`, `x{a=1} 2`, `x 1 2 3`, `x{a="1",a="2"} 1`, `x abc`, `{a="1"} 1`, `x{a="1"}1`} {
		if _, err := ParseMetrics("ok 1\n" + bad + "\n"); err == nil || !strings.Contains(err.Error(), "line 2") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
