//! A blocking operator client over gRPC with the admin bundle `init` wrote, for tests that
//! must not depend on the `opictl` binary.

use opi_pki::bundle::OperatorBundle;
use opi_proto::v1::operator_client::OperatorClient;
use opi_proto::v1::{
    Connectivity, CreateTokenRequest, GetNodeRequest, Node, SetMaintenanceRequest,
};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

use crate::Manager;

/// Lifetime of the tokens [`Admin::create_token`] makes.
const TOKEN_TTL_SECS: u64 = 3600;

/// The admin operator of a running manager.
pub struct Admin {
    runtime: Runtime,
    client: OperatorClient<Channel>,
}

impl Admin {
    /// Connects to `manager` with its admin bundle.
    pub fn connect(manager: &Manager) -> Self {
        let bundle = OperatorBundle::read(&manager.admin_bundle()).expect("admin bundle");
        let runtime = Runtime::new().expect("tokio runtime");
        let client = runtime
            .block_on(crate::grpc::operator(
                &manager.endpoint(),
                &manager.data_dir,
                &bundle.fleet,
                &bundle.cert,
                &bundle.key,
            ))
            .expect("admin connects to the manager");
        Self { runtime, client }
    }

    /// Creates a token for `pool` with `uses` uses; returns `ID.SECRET`.
    pub fn create_token(&mut self, pool: &str, uses: u32) -> String {
        let request = CreateTokenRequest {
            pool: pool.into(),
            ttl_secs: TOKEN_TTL_SECS,
            uses,
            labels: Default::default(),
            description: "end-to-end test".into(),
        };
        let created = self
            .runtime
            .block_on(self.client.create_token(request))
            .expect("token created");
        created.into_inner().secret
    }

    /// One node as the manager shows it.
    pub fn node(&mut self, name: &str) -> Node {
        let request = GetNodeRequest { name: name.into() };
        self.runtime
            .block_on(self.client.get_node(request))
            .unwrap_or_else(|status| panic!("get node {name}: {status}"))
            .into_inner()
    }

    /// Whether `name` shows as online.
    pub fn online(&mut self, name: &str) -> bool {
        self.node(name).connectivity == Connectivity::Online as i32
    }

    /// Whether `name` shows as offline.
    pub fn offline(&mut self, name: &str) -> bool {
        self.node(name).connectivity == Connectivity::Offline as i32
    }

    /// Puts `name` in maintenance, or takes it out.
    pub fn set_maintenance(&mut self, name: &str, on: bool, reason: &str) {
        let request = SetMaintenanceRequest {
            name: name.into(),
            on,
            reason: reason.into(),
        };
        self.runtime
            .block_on(self.client.set_maintenance(request))
            .unwrap_or_else(|status| panic!("maintenance of {name}: {status}"));
    }
}
