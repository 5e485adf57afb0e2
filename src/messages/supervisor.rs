//! Messages for the root supervisor.

use ractor::{ActorRef, RpcReplyPort};

use crate::messages::audit::AuditMsg;
use crate::messages::seal_keeper::SealKeeperMsg;

/// Messages handled by `Supervisor`.
pub enum SupervisorMsg {
    /// The long-lived service actors, for the public handle.
    Children(RpcReplyPort<(ActorRef<SealKeeperMsg>, ActorRef<AuditMsg>)>),
    /// Stop everything in order: devices (draining their mailboxes, freeing memory), then the
    /// seal keeper, then the audit log (flushed and closed). Replies when done.
    Shutdown(RpcReplyPort<()>),
}
