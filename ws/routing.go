package ws

// routing is the index from targets to clients. An event reaches the union
// of its users' and roles' sessions, or every session for a broadcast —
// among the sessions without a topic filter — plus the sessions whose
// filter names its topic and that are entitled to it. So its cost is
// O(recipients), never a scan of every session: a session subscribed to a
// few topics is not visited for events of the others, and an event on a
// topic few subscribe to does not visit every session of its role.
// Guarded by Hub.mu.
type routing struct {
	all     map[*client]struct{}            // every session
	open    map[*client]struct{}            // sessions without a topic filter
	byUser  map[string]map[*client]struct{} // every session by user (a user has few)
	byRole  map[string]map[*client]struct{} // open sessions by role
	byTopic map[string]map[*client]struct{} // filtered sessions by each topic of their filter
	roles   map[string]int                  // every session, by role
	noRole  int                             // sessions without a role
	// version changes whenever a session is added or removed.
	version uint64
}

func newRouting() routing {
	return routing{
		all:     map[*client]struct{}{},
		open:    map[*client]struct{}{},
		byUser:  map[string]map[*client]struct{}{},
		byRole:  map[string]map[*client]struct{}{},
		byTopic: map[string]map[*client]struct{}{},
		roles:   map[string]int{},
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

func count(m map[string]int, k string, d int) {
	if m[k] += d; m[k] <= 0 {
		delete(m, k)
	}
}

// add indexes c under its current filter (c.topics, which may change only
// while c is removed).
func (r *routing) add(c *client) {
	r.all[c] = struct{}{}
	r.version++
	addTo(r.byUser, c.userID, c)
	for _, role := range c.roles {
		count(r.roles, role, 1)
	}
	if len(c.roles) == 0 {
		r.noRole++
	}
	if c.topics == nil {
		r.open[c] = struct{}{}
		for _, role := range c.roles {
			addTo(r.byRole, role, c)
		}
		return
	}
	for t := range c.topics {
		addTo(r.byTopic, t, c)
	}
}

func (r *routing) remove(c *client) bool {
	if _, ok := r.all[c]; !ok {
		return false
	}
	delete(r.all, c)
	r.version++
	removeFrom(r.byUser, c.userID, c)
	for _, role := range c.roles {
		count(r.roles, role, -1)
	}
	if len(c.roles) == 0 {
		r.noRole--
	}
	if c.topics == nil {
		delete(r.open, c)
		for _, role := range c.roles {
			removeFrom(r.byRole, role, c)
		}
		return true
	}
	for t := range c.topics {
		removeFrom(r.byTopic, t, c)
	}
	return true
}

// each calls fn once for every session an event of topic with targets
// users and roles reaches (both nil, i.e. NULL: a broadcast; empty sets
// reach nobody). gen must be new for every call: a session matching
// several targets is visited once.
func (r *routing) each(topic string, users, roles []string, gen uint64, fn func(*client)) {
	visit := func(set map[*client]struct{}) {
		for c := range set {
			if c.mark != gen && c.topics == nil { // filtered ones: below
				c.mark = gen
				fn(c)
			}
		}
	}
	if users == nil && roles == nil {
		visit(r.open)
	} else {
		for _, u := range users {
			visit(r.byUser[u])
		}
		for _, role := range roles {
			visit(r.byRole[role])
		}
	}
	for c := range r.byTopic[topic] {
		if c.mark != gen && entitled(c.userID, c.roles, users, roles) {
			c.mark = gen
			fn(c)
		}
	}
}
