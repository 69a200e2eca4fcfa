//! A connection to Redis, standalone or cluster, as the redis broker uses it: commands
//! and scripts (`ConnectionLike`), and pub/sub (plain on one Redis, sharded in a cluster,
//! where `SSUBSCRIBE` follows each channel to its shard).
//!
//! Both are made lazily (sidewire starts while Redis is down) and reconnect by themselves;
//! pushes (messages, disconnections) go to the callback given at construction.

use std::time::Duration;

use redis::aio::{AsyncPushSender, ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, ProtocolVersion, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

#[derive(Clone)]
pub enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Link {
    /// A lazily made connection; `push` receives its pub/sub messages and disconnections.
    pub fn new(config: &RedisConfig, push: Option<impl AsyncPushSender>) -> RedisResult<Self> {
        if config.cluster {
            let mut builder = ClusterClientBuilder::new(vec![config.url.as_str()])
                .use_protocol(ProtocolVersion::RESP3)
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(1);
            if let Some(push) = push {
                builder = builder.push_sender(push);
            }
            let client: ClusterClient = builder.build()?;
            let con = client.get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
            return Ok(Link::Cluster(con));
        }
        let client = redis::Client::open(with_resp3(&config.url).as_str())?;
        let mut cfg = ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.timeout))
            .set_connection_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        if let Some(push) = push {
            cfg = cfg.set_push_sender(push);
        }
        Ok(Link::Single(ConnectionManager::new_lazy_with_config(client, cfg)?))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Link::Cluster(_))
    }

    /// Subscribes to pub/sub channels (sharded in a cluster, one at a time: one
    /// `SSUBSCRIBE` may only name channels of one slot).
    pub async fn listen(&mut self, names: Vec<String>) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.subscribe(names).await,
            Link::Cluster(c) => {
                for name in names {
                    c.ssubscribe(name).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn unlisten(&mut self, name: String) -> RedisResult<()> {
        match self {
            Link::Single(c) => c.unsubscribe(name).await,
            Link::Cluster(c) => c.sunsubscribe(name).await,
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// RESP3 is what carries pub/sub pushes on a ConnectionManager.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}
