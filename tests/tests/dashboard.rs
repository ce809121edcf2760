//! The dashboard page in a real headless Chromium (Debian's `chromium`, installed by
//! `.ci/setup.sh`): a validator and two miners train a few windows; the page, served by the
//! validator at `/` of its metrics address, is rendered by Chromium; the rendered DOM must hold
//! the loss summary and a row per miner, and the screenshot must be a full-size PNG with the
//! charts drawn (far larger than a blank page).

use apiary_config::Role;
use apiary_tests::{http_get, init_tracing, test_config, wait_until, TestNet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// The body of `GET path` (status 200 checked).
async fn get(addr: SocketAddr, path: &str) -> String {
    let (status, headers, body) = http_get(addr, path).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers}\n{body}");
    body
}

fn chromium() -> String {
    for bin in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return bin.to_string();
        }
    }
    panic!("no Chromium found: install Debian's `chromium` (bash .ci/setup.sh does)");
}

/// Chromium, headless, against `url`, with `args` (a fresh profile in `dir`).
fn headless(bin: &str, dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_renders_loss_miners_and_peers_in_chromium() {
    init_tracing();
    let bin = chromium();
    let mut net = TestNet::new();
    let dir = net.dir.path().to_path_buf();
    let mut vcfg = test_config(&dir, "validator", Role::Validator);
    vcfg.metrics.listen = "127.0.0.1:0".into();
    vcfg.metrics.dashboard = true;
    let v = net.spawn(vcfg).await;
    let m1 = net.spawn(test_config(&dir, "miner-1", Role::Miner)).await;
    let m2 = net.spawn(test_config(&dir, "miner-2", Role::Miner)).await;
    net.wait_connected(T).await;
    let addr = net.nodes[v].metrics_addr().expect("metrics address");
    let bpw = net.nodes[v].ctx().cfg.chain.blocks_per_window;
    let eval = net.nodes[v].handles().evaluator.clone();
    let first = net.chain.head().number / bpw + 1;
    for w in first..first + 3 {
        net.advance_to(w * bpw);
        wait_until(T, &format!("validator scores window {w}"), || async {
            eval.scored_in(w).await.unwrap_or(0) >= 2
        })
        .await;
    }
    net.advance_to((first + 3) * bpw);
    wait_until(T, "two windows applied", || async {
        net.nodes[v].ctx().status().model_window >= Some(first + 1)
    })
    .await;

    wait_until(T, "three windows closed", || async {
        eval.last_closed().await.ok().flatten() >= Some(first + 2)
    })
    .await;
    // Weights reach the chain (the page must say where).
    wait_until(T, "weights on chain", || async {
        net.nodes[v].ctx().status().weights_set.is_some()
    })
    .await;
    // A window the validator did not close (its history row gone, as after a restart across
    // it): the page must show it as a gap, not draw a line through it.
    let gap = first + 1;
    net.nodes[v]
        .ctx()
        .store
        .delete(
            apiary_storage::Column::ScoreHistory,
            &apiary_storage::u64_key(gap),
        )
        .expect("delete a history row");

    // The data the page polls.
    let data = get(addr, "/api/dashboard").await;
    let d: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert!(d["loss"].as_array().is_some_and(|l| l.len() >= 2), "{d}");
    assert_eq!(d["miners"].as_array().map(Vec::len), Some(2), "{d}");
    assert!(d["peers"].as_array().is_some_and(|p| p.len() >= 2), "{d}");
    let history: Vec<u64> = d["score_history"]
        .as_array()
        .expect("score history")
        .iter()
        .filter_map(|w| w["window"].as_u64())
        .collect();
    assert!(
        history.contains(&first) && history.contains(&(first + 2)),
        "{d}"
    );
    assert!(!history.contains(&gap), "{d}");
    let (hmin, hmax) = (history[0], history[history.len() - 1]);
    let set_block = d["chain"]["weights_set"]["block"]
        .as_u64()
        .unwrap_or_else(|| panic!("weights_set in {d}"));

    // The page, rendered by Chromium after its scripts ran.
    let url = format!("http://{addr}/");
    let profile = tempfile::tempdir().expect("profile");
    let out = headless(&bin, profile.path(), &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("latest loss"),
        "no loss summary in the rendered page:\n{dom}"
    );
    for m in [m1, m2] {
        let uid = net.nodes[m].ctx().uid().expect("uid");
        assert!(
            dom.contains(&format!("<tr data-key=\"{uid}\">")),
            "no row for miner uid {uid}:\n{dom}"
        );
    }
    assert!(dom.contains("model window"), "{dom}");
    // A freshly opened page draws every miner's score history from the node, with the gap
    // named; the chain section says where the weights are; peers carry their uids.
    let gaps: Vec<String> = history
        .windows(2)
        .filter(|p| p[1] - p[0] > 1)
        .map(|p| match (p[0] + 1, p[1] - 1) {
            (a, b) if a == b => format!("w{a}"),
            (a, b) => format!("w{a}–w{b}"),
        })
        .collect();
    assert!(gaps.contains(&format!("w{gap}")), "{gaps:?}");
    let summary = format!(
        "score history from the node: {} windows, 2 miner(s); {} gap(s), shaded: {}",
        history.len(),
        gaps.len(),
        gaps.join(", ")
    );
    assert!(
        dom.contains(&summary),
        "no `{summary}` (history w{hmin}..w{hmax}):\n{dom}"
    );
    assert!(
        dom.contains(&format!("set at block {set_block} (window ")),
        "no weights-on-chain status for block {set_block}:\n{dom}"
    );
    for m in [m1, m2] {
        let uid = net.nodes[m].ctx().uid().expect("uid");
        let row = format!("<tr data-key=\"{uid}\"><td>{uid}</td><td>12D3Ko");
        assert!(dom.contains(&row), "no peer row with uid {uid}:\n{dom}");
    }
    assert!(
        dom.contains("<span id=\"error\"></span>"),
        "the page reports an error:\n{dom}"
    );

    let shot = dir.join("dashboard.png");
    let out = headless(
        &bin,
        profile.path(),
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,900",
        ],
    );
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().expect("width")),
        u32::from_be_bytes(png[20..24].try_into().expect("height")),
    );
    assert_eq!((w, h), (1200, 900));
    // A blank page compresses to a few KiB; charts, tables and text do not.
    assert!(
        png.len() > 25_000,
        "the screenshot looks empty: {} bytes",
        png.len()
    );
    net.shutdown().await;
}
