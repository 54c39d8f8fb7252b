//! Redis Cluster (`VT_REDIS_CLUSTER`): the cluster-aware client, and the
//! routing of `WAIT` to the node that took the write. Every command the
//! ingestor builds touches the keys of one hash slot (tested below).

use std::time::Duration;

use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;

/// A connection to the cluster seeded by `url`, made in the background: the
/// service starts while the cluster is down. Commands follow MOVED/ASK, and a
/// failover once the slot map is read again.
pub fn connect(url: &str, timeout: Duration, response_timeout: Duration) -> redis::RedisResult<ClusterConnection> {
    let client = ClusterClientBuilder::new([url])
        .tcp_settings(TcpSettings::default().set_nodelay(true))
        .connection_timeout(timeout)
        .response_timeout(response_timeout)
        .build()?;
    Ok(client.get_pending_async_connection_with_config(ClusterConfig::default()))
}

/// Where `WAIT` must go after a write to `key`: the master of its slot. The
/// client keeps one multiplexed connection per node, and a keyed command is
/// sent on that node's, so `WAIT` counts the write it follows.
pub fn master_of(key: &str) -> RoutingInfo {
    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master)))
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use crate::stream::tests::args;

    /// The keys of a command the ingestor sends, by its key specification.
    fn keys(cmd: &redis::Cmd) -> Vec<Vec<u8>> {
        let a = args(cmd);
        let name = String::from_utf8_lossy(&a[0]).to_ascii_uppercase();
        match name.as_str() {
            "XADD" | "XLEN" | "HGET" | "HMGET" => vec![a[1].clone()],
            "XINFO" => vec![a[2].clone()],
            "EVAL" => {
                let n: usize = String::from_utf8_lossy(&a[2]).parse().unwrap();
                a[3..3 + n].to_vec()
            }
            other => panic!("a command this test does not know: {other}"),
        }
    }

    fn one_slot(cmd: &redis::Cmd) {
        let keys = keys(cmd);
        assert!(!keys.is_empty());
        let first = Slot::for_key(&keys[0]);
        for key in &keys {
            assert_eq!(Slot::for_key(key), first, "{} crosses slots", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn every_command_touches_one_slot() {
        use crate::device_stats::{self, Counts, Deltas};
        use crate::{auth, in_doubt, stream};

        let shards = stream::shard_keys("vt:telemetry", 8);
        for key in &shards {
            let single = stream::xadd_cmd(key, 7, b"[]", 1);
            one_slot(&single);
            let parts = [stream::Part { device_id: 7, at_ms: 1, readings_json: b"[]" }; 2];
            one_slot(&stream::xadd_group_cmd(key, &parts));
            one_slot(&in_doubt::find_cmd(key, &single, "0-0"));
            one_slot(&stream::xinfo_groups_cmd(key));
            one_slot(&stream::xlen_cmd(key));
        }
        let digests: Vec<[u8; 32]> = (0..50u8).map(|i| [i; 32]).collect();
        one_slot(&auth::hget_cmd("vt:device-tokens", &digests[0]));
        one_slot(&auth::hmget_cmd("vt:device-tokens", &digests));

        let mut deltas = Deltas::new();
        for device in 0..2000u64 {
            let counts =
                Counts { received: 2, accepted: 1, readings: 3, rejected: vec![("topic", 1)], ..Counts::default() };
            deltas.insert((device, 5_000 + i64::try_from(device % 3).unwrap()), counts);
        }
        let cmds = device_stats::eval_cmds(&device_stats::key_deltas(deltas), true);
        assert!(cmds.len() > 1);
        for (_, cmd) in &cmds {
            one_slot(cmd);
        }
    }
}
