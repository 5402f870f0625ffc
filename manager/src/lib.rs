//! OPI Fleet manager.

pub mod store;
