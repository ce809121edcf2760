//! `apiary doctor` on the config of a node that is running: instead of reporting the listen
//! port as taken, it asks the node over its admin socket and reports the node's peer id and
//! listen addresses, and its reachability as the node's AutoNAT sees it; once the node stops,
//! it checks the config as for a node about to start.

use apiary_config::Role;
use apiary_daemon::doctor::{blocks, check, render, Check, Verdict};
use apiary_tests::{init_tracing, test_config, TestNet};
use std::path::Path;

fn find<'a>(checks: &'a [Check], what: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.what == what)
        .unwrap_or_else(|| panic!("no {what} check:\n{}", render(checks)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_asks_the_running_node_for_its_addresses_and_reachability() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut cfg = test_config(&dir, "solo", Role::Validator);
    cfg.net.autonat = true;
    let path = Path::new("node.toml");

    let before = check(&cfg, path).await;
    assert!(!blocks(&before), "{}", render(&before));
    assert!(
        find(&before, "listen")
            .detail
            .contains("a free port is picked at start"),
        "{}",
        render(&before)
    );
    assert!(find(&before, "reachability")
        .detail
        .contains("once it runs"));

    let i = net.spawn(cfg.clone()).await;
    let peer = net.nodes[i].ctx().net.local_peer_id().to_string();
    let running = check(&cfg, path).await;
    let report = render(&running);
    assert!(!blocks(&running), "{report}");
    let listen = find(&running, "listen");
    assert_eq!(listen.verdict, Verdict::Ok, "{report}");
    assert!(
        listen
            .detail
            .contains("held by the node running on this config")
            && listen.detail.contains(&peer)
            && listen.detail.contains("/ip4/127.0.0.1/tcp/"),
        "{report}"
    );
    // Alone on loopback, AutoNAT has nobody to probe it yet.
    let reach = find(&running, "reachability");
    assert!(reach.detail.starts_with("AutoNAT: "), "{report}");

    net.shutdown().await;
    let after = check(&cfg, path).await;
    assert!(
        find(&after, "listen").detail.contains("picked at start"),
        "{}",
        render(&after)
    );
}
