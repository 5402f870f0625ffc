//! Fleet store: placeholder, being written.
