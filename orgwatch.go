package tether

// StatusChanges counts the status changes this Node has stored, to any
// connection, since Open: every Pause, Activate, Delete or Transition
// that moved a status adds one. It costs one atomic load. Adapters that
// keep in memory what a connection's status allows (the oauth package's
// cached access tokens) read it before they read the status, and read the
// status again once it has moved. Changes made by other Nodes sharing the
// Store are not counted.
func (n *Node) StatusChanges() uint64 { return n.statusChanges.Load() }
