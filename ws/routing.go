package ws

// routing is the index from targets to clients: an event reaches the union
// of byUser[u] for its users and byRole[r] for its roles, or all clients for
// a broadcast, so its cost is O(recipients), never a scan of every session.
// Guarded by Hub.mu.
type routing struct {
	all    map[*client]struct{}
	byUser map[string]map[*client]struct{}
	byRole map[string]map[*client]struct{}
	noRole int // clients without a role
	// version changes whenever a client is added or removed.
	version uint64
}

func newRouting() routing {
	return routing{
		all:    map[*client]struct{}{},
		byUser: map[string]map[*client]struct{}{},
		byRole: map[string]map[*client]struct{}{},
	}
}

func addTo(m map[string]map[*client]struct{}, k string, c *client) {
	set := m[k]
	if set == nil {
		set = map[*client]struct{}{}
		m[k] = set
	}
	set[c] = struct{}{}
}

func removeFrom(m map[string]map[*client]struct{}, k string, c *client) {
	if set := m[k]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

func (r *routing) add(c *client) {
	r.all[c] = struct{}{}
	r.version++
	if len(c.roles) == 0 {
		r.noRole++
	}
	addTo(r.byUser, c.userID, c)
	for _, role := range c.roles {
		addTo(r.byRole, role, c)
	}
}

func (r *routing) remove(c *client) bool {
	if _, ok := r.all[c]; !ok {
		return false
	}
	delete(r.all, c)
	r.version++
	if len(c.roles) == 0 {
		r.noRole--
	}
	removeFrom(r.byUser, c.userID, c)
	for _, role := range c.roles {
		removeFrom(r.byRole, role, c)
	}
	return true
}

// each calls fn once for every client targeted by users and roles (all
// clients when both are nil, i.e. NULL; empty sets reach nobody). gen must
// be new for every call: a client matching several targets is visited once.
func (r *routing) each(users, roles []string, gen uint64, fn func(*client)) {
	if users == nil && roles == nil {
		for c := range r.all {
			fn(c)
		}
		return
	}
	visit := func(set map[*client]struct{}) {
		for c := range set {
			if c.mark != gen {
				c.mark = gen
				fn(c)
			}
		}
	}
	for _, u := range users {
		visit(r.byUser[u])
	}
	for _, role := range roles {
		visit(r.byRole[role])
	}
}
