//! What the load runs against: our cluster through `kvclient`, or (feature `etcd`) an etcd
//! cluster. Workers hold a `TargetSession` and do not know which.

use kvclient::{Client, ClientError, ReadMode, Session};
use kvstate::{Op, OpResult};

/// The cluster under load.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    Kv(&'a Client),
    #[cfg(feature = "etcd")]
    Etcd(&'a crate::etcd::EtcdTarget),
}

impl Target<'_> {
    /// A new session (for our cluster, a new exactly-once session with its own client id).
    pub fn session(&self) -> TargetSession {
        match self {
            Target::Kv(client) => TargetSession::Kv(client.session()),
            #[cfg(feature = "etcd")]
            Target::Etcd(etcd) => TargetSession::Etcd(Box::new(etcd.session())),
        }
    }
}

/// One client of the target.
pub enum TargetSession {
    Kv(Session),
    #[cfg(feature = "etcd")]
    Etcd(Box<crate::etcd::EtcdSession>),
}

impl TargetSession {
    pub async fn execute(&mut self, op: Op, mode: ReadMode) -> Result<OpResult, ClientError> {
        match self {
            TargetSession::Kv(session) => session.execute(op, mode).await,
            #[cfg(feature = "etcd")]
            TargetSession::Etcd(session) => session.execute(op, mode).await,
        }
    }
}
