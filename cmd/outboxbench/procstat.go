package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/grupogad/outboxd/internal/procstat"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat.
const clockTicks = procstat.ClockTicks

// procSample is a process's CPU time and memory at one instant.
type procSample struct {
	at       time.Time
	cpuTicks int64 // utime + stime
	rssKiB   int64
}

func sampleProc(pid int) (procSample, error) {
	s := procSample{at: time.Now()}
	ticks, err := procstat.CPUTicks(pid)
	if err != nil {
		return s, err
	}
	s.cpuTicks = ticks
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return s, nil
}

// cpuPercent is the CPU used between two samples, in % of one core.
func cpuPercent(a, b procSample) float64 {
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(b.cpuTicks-a.cpuTicks) / clockTicks / dt * 100
}
