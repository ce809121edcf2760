//! The Prometheus endpoint during a devnet: a validator and two miners run a couple of windows;
//! the validator's `GET /metrics` (on 127.0.0.1, the port the node picked) is parsed with a
//! Prometheus text-format parser and its key series checked; then Debian's real Prometheus
//! (installed by `.ci/setup.sh`) lints it with `promtool`, scrapes the nodes and runs every query
//! of the Grafana dashboard `config/grafana/apiary.json`.

use apiary_config::Role;
use apiary_tests::{http_get, init_tracing, test_config, wait_until, TestNet};
use prometheus_parse::{Scrape, Value};
use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// Scrapes `addr` and parses the text format.
async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    assert!(
        headers.contains("Content-Type: text/plain; version=0.0.4"),
        "{headers}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

/// The value of a counter or gauge sample.
fn num(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a single value: {other:?}"),
    }
}

/// Samples of `metric` whose labels include `labels`.
fn find<'a>(
    s: &'a Scrape,
    metric: &str,
    labels: &[(&str, &str)],
) -> Vec<&'a prometheus_parse::Sample> {
    s.samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .collect()
}

/// The one value of `metric` with `labels`; panics when it is missing.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(s, metric, labels);
    assert_eq!(
        found.len(),
        1,
        "{metric}{labels:?}: {} samples in the scrape",
        found.len()
    );
    num(&found[0].value)
}

/// Every sample has a HELP line, a type declared by its TYPE line (never untyped), and counters
/// (and only they) end in `_total`; every name and label follows the apiary conventions.
fn check_conventions(s: &Scrape) {
    assert!(!s.samples.is_empty(), "an empty scrape");
    for x in &s.samples {
        assert!(x.metric.starts_with("apiary_"), "{}", x.metric);
        assert!(
            s.docs.get(&x.metric).is_some_and(|d| !d.is_empty()),
            "{} has no HELP",
            x.metric
        );
        match &x.value {
            Value::Counter(v) => {
                assert!(x.metric.ends_with("_total"), "counter {}", x.metric);
                assert!(*v >= 0.0, "{} = {v}", x.metric);
            }
            Value::Gauge(_) => assert!(!x.metric.ends_with("_total"), "gauge {}", x.metric),
            other => panic!("{} is {other:?}: its TYPE line is missing", x.metric),
        }
    }
}

/// Every `apiary_*` name in the queries of `config/grafana/apiary.json` (valid JSON).
fn dashboard_names() -> std::collections::BTreeSet<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/apiary.json");
    let text = std::fs::read_to_string(&path).expect("the Grafana dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("a target's expr").to_string());
        }
    }
    assert!(exprs.len() >= 8, "{} queries", exprs.len());
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        for (i, _) in e.match_indices("apiary_") {
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// Every `apiary_*` name the Grafana dashboard queries is a family of one of `scrapes`.
fn dashboard_names_are_exported(scrapes: &[&Scrape]) {
    let names = dashboard_names();
    for name in &names {
        assert!(
            scrapes.iter().any(|s| s.docs.contains_key(name)),
            "the dashboard queries {name}, which no node exports"
        );
    }
}

/// The dashboard's queries, with its variables set as Grafana would for "all nodes".
fn dashboard_queries() -> Vec<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/grafana/apiary.json");
    let text = std::fs::read_to_string(&path).expect("the Grafana dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("a target's expr")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m")
        })
        .collect()
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary from Debian's `prometheus` package, or a panic saying how to get it.
fn prometheus_bin(name: &str) -> &str {
    let ok = std::process::Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{name}` not found: install Debian's `prometheus` package (bash .ci/setup.sh does)"
    );
    name
}

/// Runs a Prometheus query; the `data.result` of a successful answer.
async fn prom_query(prom: SocketAddr, query: &str) -> Vec<serde_json::Value> {
    let (status, _, body) =
        http_get(prom, &format!("/api/v1/query?query={}", urlencode(query))).await;
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("Prometheus answered {status} with no JSON ({e}): {body}"));
    assert_eq!(v["status"], "success", "query `{query}`: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// `promtool check metrics` on each node's exposition (Prometheus's own linter: naming, units,
/// HELP and TYPE), then a real Prometheus server on 127.0.0.1 scrapes the nodes every second and
/// evaluates every query of `config/grafana/apiary.json` (and its node picker): each must parse
/// and run, and the main panels must have data.
async fn prometheus_runs_the_dashboard(targets: &[SocketAddr]) {
    let promtool = prometheus_bin("promtool");
    for t in targets {
        let (_, _, body) = http_get(*t, "/metrics").await;
        let mut lint = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool runs");
        {
            use std::io::Write;
            let mut stdin = lint.stdin.take().expect("stdin");
            stdin.write_all(body.as_bytes()).expect("feed promtool");
        }
        let out = lint.wait_with_output().expect("promtool ends");
        assert!(
            out.status.success(),
            "promtool check metrics on {t}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let dir = tempfile::tempdir().expect("prometheus dir");
    // Prometheus takes its listen address on the command line: pick a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let prom: SocketAddr = ([127, 0, 0, 1], port).into();
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: apiary\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .expect("write the config");
    let _server = Killed(
        std::process::Command::new(prometheus_bin("prometheus"))
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    wait_until(
        T,
        "Prometheus has scraped both nodes three times",
        || async {
            // Up, and past its start-up (until then it answers 503).
            if tokio::net::TcpStream::connect(prom).await.is_err()
                || http_get(prom, "/-/ready").await.0 != "HTTP/1.1 200 OK"
            {
                return false;
            }
            let r = prom_query(prom, "min(count_over_time(up{job=\"apiary\"}[1m]))").await;
            let up = prom_query(prom, "sum(up{job=\"apiary\"})").await;
            let val = |r: &[serde_json::Value]| {
                r.first()
                    .and_then(|s| s["value"][1].as_str())
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            val(&r) >= 3.0 && val(&up) == targets.len() as f64
        },
    )
    .await;

    let queries = dashboard_queries();
    let mut with_data = std::collections::BTreeSet::new();
    for q in &queries {
        if !prom_query(prom, q).await.is_empty() {
            with_data.insert(q.clone());
        }
    }
    for needed in [
        "apiary_held_out_loss{instance=~\".*\"}",
        "apiary_train_loss{instance=~\".*\"}",
        "apiary_miner_score{instance=~\".*\"}",
        "rate(apiary_net_bytes_received_total{instance=~\".*\"}[1m])",
        "topk(10, sum by (instance, peer) (rate(apiary_peer_bytes_total{instance=~\".*\",direction=\"in\"}[1m])))",
        "sum by (instance, actor) (increase(apiary_actor_restarts_total{instance=~\".*\"}[1m]))",
    ] {
        assert!(
            with_data.contains(needed),
            "the dashboard query `{needed}` has no data in Prometheus; with data: {with_data:#?}"
        );
    }
    // The node picker: label_values(apiary_node_info, instance).
    let (_, _, body) = http_get(
        prom,
        &format!(
            "/api/v1/label/instance/values?{}",
            urlencode_pair("match[]", "apiary_node_info")
        ),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(targets.len()),
        "the node picker lists every node: {v}"
    );
    eprintln!(
        "Prometheus ran {} dashboard queries; {} had data",
        queries.len(),
        with_data.len()
    );
}

fn urlencode_pair(k: &str, v: &str) -> String {
    format!("{}={}", urlencode(k), urlencode(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_endpoint_is_scraped_and_parsed_during_a_devnet() {
    init_tracing();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut vcfg = test_config(&dir, "validator", Role::Validator);
    vcfg.metrics.listen = "127.0.0.1:0".into();
    vcfg.node.disk_budget_mb = 1024;
    let v = net.spawn(vcfg).await;
    let mut m1cfg = test_config(&dir, "miner-1", Role::Miner);
    m1cfg.metrics.listen = "127.0.0.1:0".into();
    let m1 = net.spawn(m1cfg).await;
    let m2 = net.spawn(test_config(&dir, "miner-2", Role::Miner)).await;
    net.wait_connected(T).await;
    let vaddr = net.nodes[v]
        .metrics_addr()
        .expect("validator's metrics endpoint");
    assert!(vaddr.ip().is_loopback() && vaddr.port() != 0, "{vaddr}");
    let m1addr = net.nodes[m1]
        .metrics_addr()
        .expect("miner-1's metrics endpoint");
    assert_eq!(
        net.nodes[m2].metrics_addr(),
        None,
        "off unless metrics.listen is set"
    );

    // Before any window: every series the Grafana dashboard queries is there at zero, so its
    // panels show 0 instead of "No data" (a series per miner or per peer needs the miner or
    // peer, and a training loss needs training).
    let at_start = scrape(vaddr).await;
    let needs_an_entity = |name: &str| {
        name.starts_with("apiary_miner_")
            || name.starts_with("apiary_peer_")
            || name == "apiary_train_loss"
    };
    let missing: Vec<String> = dashboard_names()
        .into_iter()
        .filter(|n| !needs_an_entity(n) && !at_start.samples.iter().any(|x| &x.metric == n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which a fresh validator exports no sample of"
    );
    assert_eq!(
        value(&at_start, "apiary_weights_last_block", &[]),
        0.0,
        "no weights on chain yet"
    );
    assert_eq!(value(&at_start, "apiary_build_info", &[]), 1.0);

    // Two windows: both miners' updates scored, each record applied.
    let vctx = net.nodes[v].ctx().clone();
    let eval = net.nodes[v].handles().evaluator.clone();
    let bpw = vctx.cfg.chain.blocks_per_window;
    let first = net.chain.head().number / bpw + 1;
    for w in first..first + 2 {
        net.advance_to(w * bpw);
        wait_until(
            T,
            &format!("validator scores 2 updates of window {w}"),
            || async { eval.scored_in(w).await.unwrap_or(0) >= 2 },
        )
        .await;
    }
    net.advance_to((first + 2) * bpw);
    wait_until(T, "the validator applies the second window", || async {
        vctx.status().model_window == Some(first + 1)
    })
    .await;

    let miners: Vec<(String, String)> = [m1, m2]
        .iter()
        .map(|&m| {
            let c = net.nodes[m].ctx();
            (
                c.uid().expect("miner uid").to_string(),
                c.hotkey.id().ss58(),
            )
        })
        .collect();
    // The scores of a closed window reach the scrape.
    wait_until(T, "both miners' scores in a scrape", || async {
        let s = scrape(vaddr).await;
        miners
            .iter()
            .all(|(uid, _)| !find(&s, "apiary_miner_score", &[("uid", uid)]).is_empty())
    })
    .await;

    let s = scrape(vaddr).await;
    check_conventions(&s);
    let info = find(&s, "apiary_node_info", &[("role", "validator")]);
    assert_eq!(info.len(), 1, "apiary_node_info");
    assert_eq!(
        info[0].labels.get("hotkey"),
        Some(vctx.hotkey.id().ss58().as_str())
    );

    // Windows and losses.
    let window = value(&s, "apiary_window", &[]);
    assert!(window >= (first + 2) as f64, "window {window}");
    assert!(value(&s, "apiary_model_window", &[]) >= (first + 1) as f64);
    let loss = value(&s, "apiary_held_out_loss", &[]);
    assert!(loss.is_finite() && loss > 0.0, "held-out loss {loss}");
    assert!(value(&s, "apiary_block_number", &[]) >= ((first + 2) * bpw) as f64);
    assert!(value(&s, "apiary_chain_lag_blocks", &[]) >= 0.0);
    assert!(value(&s, "apiary_chain_head_timestamp_seconds", &[]) > 1.0e9);

    // Per-miner scores, labelled with uid and hotkey.
    for (uid, hotkey) in &miners {
        let score = value(
            &s,
            "apiary_miner_score",
            &[("uid", uid), ("hotkey", hotkey)],
        );
        assert!((0.0..=1.0).contains(&score), "uid {uid}: score {score}");
        let last = value(&s, "apiary_miner_last_score", &[("uid", uid)]);
        assert!((0.0..=1.0).contains(&last), "uid {uid}: last score {last}");
        assert!(value(&s, "apiary_miner_windows_total", &[("uid", uid)]) >= 1.0);
    }

    // Bytes and gossip outcomes.
    assert!(value(&s, "apiary_net_bytes_received_total", &[]) > 0.0);
    assert!(value(&s, "apiary_net_bytes_sent_total", &[]) >= 0.0);
    // Bytes per peer: the miners sent the validator their announcements and updates, and the
    // validator published its records to them and asked them for blobs.
    let per_peer = find(&s, "apiary_peer_bytes_total", &[]);
    assert!(
        per_peer.iter().all(|x| {
            matches!(x.labels.get("direction"), Some("in" | "out"))
                && x.labels.get("peer").is_some()
        }),
        "{per_peer:?}"
    );
    let peer_bytes = |peer: &str, direction: &str| {
        value(
            &s,
            "apiary_peer_bytes_total",
            &[("peer", peer), ("direction", direction)],
        )
    };
    let both_ways: Vec<String> = [m1, m2]
        .iter()
        .map(|&m| net.nodes[m].ctx().net.local_peer_id().to_string())
        .filter(|p| peer_bytes(p, "in") > 0.0 && peer_bytes(p, "out") > 0.0)
        .collect();
    assert!(
        !both_ways.is_empty(),
        "no miner has bytes both ways: {per_peer:?}"
    );
    for outcome in [
        "accepted",
        "unknown_hotkey",
        "rejected",
        "ignored",
        "bad_signature",
        "oversize",
        "malformed",
    ] {
        value(
            &s,
            "apiary_gossip_validation_total",
            &[("outcome", outcome)],
        );
    }
    assert!(
        value(
            &s,
            "apiary_gossip_validation_total",
            &[("outcome", "accepted")]
        ) >= 4.0,
        "the validator accepted the miners' announcements"
    );
    for reason in [
        "payload_malformed",
        "unregistered",
        "impersonation",
        "stale",
        "replayed",
    ] {
        value(&s, "apiary_gossip_refused_total", &[("reason", reason)]);
    }
    assert!(value(&s, "apiary_gossip_published_total", &[]) >= 1.0);

    // Peers, restarts, store, the exporter itself.
    assert!(value(&s, "apiary_connected_peers", &[]) >= 2.0);
    for m in [m1, m2] {
        let peer = net.nodes[m].ctx().net.local_peer_id().to_string();
        assert_eq!(value(&s, "apiary_peer_connected", &[("peer", &peer)]), 1.0);
        value(&s, "apiary_peer_strikes", &[("peer", &peer)]);
    }
    // Restarts per actor: every actor of a validator listed from the start, none restarted.
    let restarts = find(&s, "apiary_actor_restarts_total", &[]);
    let actors: Vec<&str> = restarts
        .iter()
        .filter_map(|x| x.labels.get("actor"))
        .collect();
    assert_eq!(actors.len(), restarts.len(), "every series has an actor");
    for child in apiary_actors::supervisor::children() {
        assert_eq!(
            value(&s, "apiary_actor_restarts_total", &[("actor", child.name)]),
            0.0,
            "actor {}",
            child.name
        );
    }
    assert_eq!(restarts.iter().map(|x| num(&x.value)).sum::<f64>(), 0.0);
    assert!(value(&s, "apiary_store_disk_bytes", &[]) > 0.0);
    assert!(value(&s, "apiary_updates_evaluated_total", &[]) >= 4.0);
    assert!(value(&s, "apiary_records_applied_total", &[]) >= 1.0);
    for source in ["chain", "evaluator", "peers", "store"] {
        assert_eq!(
            value(&s, "apiary_metrics_source_up", &[("source", source)]),
            1.0,
            "source {source}"
        );
    }
    assert!(value(&s, "apiary_metrics_requests_total", &[("code", "200")]) >= 1.0);

    // A miner's scrape: its training loss, no scores.
    let ms = scrape(m1addr).await;
    check_conventions(&ms);
    let train = value(&ms, "apiary_train_loss", &[]);
    assert!(train.is_finite() && train > 0.0, "training loss {train}");
    assert!(value(&ms, "apiary_gossip_published_total", &[]) >= 2.0);
    assert!(find(&ms, "apiary_miner_score", &[]).is_empty());

    // Every metric the Grafana dashboard queries is one the nodes export.
    dashboard_names_are_exported(&[&s, &ms]);

    // A real Prometheus lints the exposition, scrapes both nodes and runs every query of the
    // Grafana dashboard.
    prometheus_runs_the_dashboard(&[vaddr, m1addr]).await;

    // Anything but /metrics is not found.
    let (status, _, _) = http_get(vaddr, "/").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    net.shutdown().await;
    wait_until(T, "the metrics endpoint stops with the node", || async {
        tokio::net::TcpStream::connect(vaddr).await.is_err()
    })
    .await;
}
