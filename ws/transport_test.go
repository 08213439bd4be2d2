package ws

// writeOnly makes a frame writer a Transport whose Close does nothing:
// tests that look only at what is written.
type writeOnly struct {
	w interface{ Write([]byte) error }
}

func (t writeOnly) Write(b []byte) error            { return t.w.Write(b) }
func (writeOnly) Close(CloseError, <-chan struct{}) {}
