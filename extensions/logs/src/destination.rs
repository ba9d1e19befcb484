//! The contract of a log destination: the [`Sink`] trait that the syslog, RELP and Loggregator
//! sinks implement and the sink worker drives (apart from both, so that imports run one way).

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::LogsError;
use crate::record::Record;

/// A destination that delivers batches of records, in order.
#[async_trait]
pub trait Sink: Send + 'static {
    /// Deliver `batch` (connecting first if needed). `Ok` means the protocol accepted all of it:
    /// the records count as delivered and the checkpoint moves past them.
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError>;

    /// After a failed [`Sink::send`]: how many records at the start of that batch the receiver
    /// confirmed anyway. They count as delivered and are not sent again (sinks with per-message
    /// acknowledgements, like RELP, keep the repeats after a failure to what was unconfirmed).
    fn confirmed_before_failure(&mut self) -> usize {
        0
    }

    /// Forget the connection after a failure; the next `send` reconnects.
    async fn reset(&mut self);

    /// Close the connection cleanly (shutdown).
    async fn close(&mut self) {
        self.reset().await;
    }
}
