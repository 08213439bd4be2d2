package procstat

import (
	"os"
	"testing"
)

// The test process's own CPU time grows while it works.
func TestCPUTicksOfThisProcess(t *testing.T) {
	before, err := CPUTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for after := before; after == before; {
		for i := range 10_000_000 {
			x += i
		}
		if after, err = CPUTicks(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	_ = x
	if _, err := CPUTicks(-1); err == nil {
		t.Fatal("pid -1 read")
	}
}
