package ws

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// ParseTrustedProxies parses TRUSTED_PROXIES: CIDRs, or single addresses
// (taken as /32 or /128).
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	var bad []string
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		bad = append(bad, fmt.Sprintf("%q", s))
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("not a CIDR or address: %s", strings.Join(bad, ", "))
	}
	return out, nil
}

func trusted(proxies []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// clientAddr is the address limits, logs and metrics attribute r to: the
// peer, or, when the peer is a trusted proxy, the rightmost X-Forwarded-For
// entry that is not itself a trusted proxy. Entries left of that one were
// written by the client and are ignored (anyone can send them); an entry
// that does not parse stops the walk there, at the last address a trusted
// proxy vouched for.
func clientAddr(r *http.Request, proxies []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || len(proxies) == 0 || !trusted(proxies, peer) {
		return host
	}
	client := peer
	hops := r.Header.Values("X-Forwarded-For")
	for i := len(hops) - 1; i >= 0; i-- {
		parts := strings.Split(hops[i], ",")
		for j := len(parts) - 1; j >= 0; j-- {
			a, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
			if err != nil {
				return client.Unmap().String()
			}
			client = a
			if !trusted(proxies, a) {
				return a.Unmap().String()
			}
		}
	}
	return client.Unmap().String()
}
