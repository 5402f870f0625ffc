//! OPI Fleet wire protocol, generated from `proto/opi/v1/fleet.proto`.
//!
//! Three services share the manager's single TLS port:
//! - `Enrollment`: the only call served without a client certificate;
//! - `Agent`: the node's long-lived stream and certificate renewal, node identities only;
//! - `Operator`: what `opictl` calls, operator identities only, authorised by role.

#![allow(clippy::doc_lazy_continuation)]

pub mod codec;

/// The subset of etcd's v3 API (package `etcdserverpb`) the manager's etcd store calls.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// Version 1 of the protocol.
pub mod v1 {
    tonic::include_proto!("opi.v1");
}
