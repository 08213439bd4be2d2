package outbox

import "errors"

// ErrInvalidEvent is returned, wrapped with the reason, for an event that
// outboxd would refuse: bad topic, payload not a JSON object or too large,
// empty target names. Emit returns it before touching the database; a row
// refused by the table's CHECK constraints is reported with it too.
var ErrInvalidEvent = errors.New("outbox: invalid event")
