//! Loggregator v2 sink: envelopes sent to the ingress `BatchSender` rpc over mutual TLS (tonic
//! with rustls and the ring provider).
//!
//! Each batch of records is one `BatchSender` call carrying one `EnvelopeBatch`; the call's
//! response confirms the server received the whole batch, and only then are the records counted
//! as delivered. A failed call is retried whole (the server may then see a batch twice; it never
//! misses one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::destination::Sink;
use crate::error::LogsError;
use crate::options::LoggregatorOptions;
use crate::record::{Record, Stream};
use crate::tls::{host_of, tls_client_config};

/// The Loggregator v2 protobuf messages and gRPC stubs (client and server), generated from
/// `proto/loggregator/v2/*.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("loggregator.v2");
}

use proto::ingress_client::IngressClient;
use proto::{Envelope, EnvelopeBatch, Log, envelope, log};

/// The v2 envelope of a record: `source_id` = app guid, `instance_id` = instance index,
/// `timestamp` = the line's timestamp in nanoseconds, tags = source type, process type,
/// namespace, pod, container and `stream`; `Log.type` is `OUT` for stdout, `ERR` for stderr, and
/// `OUT` when the stream is unknown (merged log: protobuf's default, not a claim that the line
/// went to stdout; the `stream` tag says `unknown`).
pub fn envelope(record: &Record) -> Envelope {
    let o = &record.origin;
    let mut tags = HashMap::with_capacity(8);
    tags.insert("source_type".to_owned(), o.source_type.clone());
    tags.insert("process_type".to_owned(), o.process_type.clone());
    tags.insert("namespace".to_owned(), o.namespace.clone());
    tags.insert("pod".to_owned(), o.pod.clone());
    tags.insert("container".to_owned(), o.container.clone());
    let (stream, kind) = match record.stream {
        Some(Stream::Stdout) => ("stdout", log::Type::Out),
        Some(Stream::Stderr) => ("stderr", log::Type::Err),
        None => ("unknown", log::Type::Out),
    };
    tags.insert("stream".to_owned(), stream.to_owned());
    if record.partial {
        tags.insert("partial".to_owned(), "true".to_owned());
    }
    let nanos = record.timestamp.as_nanosecond();
    Envelope {
        timestamp: i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX }),
        source_id: o.source_id.clone(),
        instance_id: o.instance_id(),
        deprecated_tags: HashMap::new(),
        tags,
        message: Some(envelope::Message::Log(Log {
            payload: record.message.clone(),
            r#type: kind as i32,
        })),
    }
}

/// Sends records to a Loggregator v2 ingress.
pub struct LoggregatorSink {
    address: String,
    endpoint: Endpoint,
    client: Option<IngressClient<Channel>>,
}

impl LoggregatorSink {
    /// A sink for `options`; TLS files are read now (client certificate and key are required).
    pub fn new(options: &LoggregatorOptions) -> Result<Self, LogsError> {
        let tls = &options.tls;
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| LogsError::TlsFile {
                path: p.to_owned(),
                message: e.to_string(),
            })
        };
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Err(LogsError::Config(
                "the Loggregator sink needs a client certificate and key (mutual TLS)".into(),
            ));
        };
        // Validate the PEM files now: tonic would only fail at the first connection.
        tls_client_config(tls)?;
        let server_name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(&options.address).to_owned());
        let tls_config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&tls.ca_file)?))
            .identity(Identity::from_pem(read(cert)?, read(key)?))
            .domain_name(server_name);
        let endpoint = Endpoint::from_shared(format!("https://{}", options.address))?
            .tls_config(tls_config)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .tcp_nodelay(true);
        Ok(LoggregatorSink {
            address: options.address.clone(),
            endpoint,
            client: None,
        })
    }
}

#[async_trait]
impl Sink for LoggregatorSink {
    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), LogsError> {
        let client = self
            .client
            .get_or_insert_with(|| IngressClient::new(self.endpoint.connect_lazy()));
        let message = EnvelopeBatch {
            batch: batch.iter().map(|r| envelope(r)).collect(),
        };
        client
            .batch_sender(futures::stream::iter([message]))
            .await
            .map_err(|status| {
                tracing::debug!(address = %self.address, %status, "BatchSender failed");
                LogsError::from(status)
            })?;
        Ok(())
    }

    async fn reset(&mut self) {
        self.client = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Origin;

    #[test]
    fn envelopes_carry_the_record_fields() {
        let origin = Arc::new(Origin {
            source_id: "guid".into(),
            instance: Some(2),
            process_type: "web".into(),
            source_type: "APP/PROC/WEB".into(),
            namespace: "ns".into(),
            pod: "app-2".into(),
            container: "opi".into(),
        });
        let mut r = Record::new(
            origin,
            "2024-01-01T00:00:01.000000002Z".parse().unwrap(),
            b"\xffbytes".to_vec(),
        );
        r.partial = true;
        let e = envelope(&r);
        assert_eq!(e.timestamp, 1_704_067_201_000_000_002);
        assert_eq!(e.source_id, "guid");
        assert_eq!(e.instance_id, "2");
        assert_eq!(e.tags["source_type"], "APP/PROC/WEB");
        assert_eq!(e.tags["stream"], "unknown");
        assert_eq!(e.tags["partial"], "true");
        match e.message {
            Some(envelope::Message::Log(l)) => assert_eq!(&l.payload[..], b"\xffbytes"),
            other => panic!("{other:?}"),
        }
    }
}
