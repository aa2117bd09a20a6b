//! The demo page in headless Chromium (`tests/browser/play.mjs`) against a real relay, over
//! WebTransport and over the WebSocket fallback: the page joins, walks with the keyboard
//! (prediction and the server's own-state agree), sees a native client walk, exchanges chat with
//! it, and adds and edits a blueprint that reaches the native client; the native client sees
//! the browser's player move. Screenshots go to `target/browser/`, for a person to look at.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestRelay;
use neonet::client::{CharacterInput, ClientEvent};

/// Longest one browser run may take before it counts as hung (each of its steps is bounded
/// too; this only catches a wedged Chromium).
const BROWSER_RUN_MAX: Duration = Duration::from_secs(240);

fn the_page_plays_with_a_native_client_over(transport: &str) {
    let Some((chromium, live_view)) = common::browser_prerequisites() else {
        return;
    };
    let script = live_view.with_file_name("play.mjs");
    let relay = TestRelay::start();
    let http = relay.browser_http();
    let native = Arc::new(relay.client("native"));
    native.send_chat("hi from native").unwrap();
    // The native player walks in circles for the whole run, so the page sees it move.
    let walking = Arc::new(AtomicBool::new(true));
    let walker = {
        let (native, walking) = (native.clone(), walking.clone());
        std::thread::spawn(move || {
            let mut yaw: u16 = 0;
            while walking.load(Ordering::Relaxed) {
                yaw = yaw.wrapping_add(300);
                native.set_input(CharacterInput {
                    move_z: 127,
                    yaw,
                    ..Default::default()
                });
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("browser"))
        .expect("target dir");
    let _ = std::fs::create_dir_all(&shots);
    let shot = shots.join(format!("play-{transport}.png"));
    let blueprint = format!("from-chromium-{transport}");
    let said = format!("hi from chromium over {transport}");
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(format!("http://{http}"))
        .args(["--transport", transport])
        .args(["--name", "chromium"])
        .args(["--chat", &said])
        .args(["--expect-chat", "hi from native"])
        .args(["--expect-moving", "native"])
        .args(["--blueprint", &blueprint])
        .arg("--screenshot")
        .arg(&shot)
        .arg("--chromium")
        .arg(&chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn node");
    // Meanwhile the native client watches the browser's player move and its blueprint edit.
    let mut browser_player = None;
    let mut first_seen = None;
    let mut browser_moved = false;
    let mut edited = false;
    let mut chat_seen = false;
    let deadline = Instant::now() + BROWSER_RUN_MAX;
    while child.try_wait().expect("wait node").is_none() && Instant::now() < deadline {
        while let Some(e) = native.poll_event() {
            match e {
                ClientEvent::Chat(m) if m.body == said => chat_seen = true,
                ClientEvent::BlueprintModified { id, version } if id.0 == blueprint => {
                    let name = native.with_world(|w| w.blueprints.get(&id).map(|b| b.name.clone()));
                    edited = version == 2 && name.as_deref() == Some("edited in chromium");
                }
                _ => {}
            }
        }
        if browser_player.is_none() {
            browser_player = native.with_world(|w| {
                w.player_names()
                    .into_iter()
                    .find(|(_, n)| n == "chromium")
                    .map(|(id, _)| id)
            });
        }
        if let Some(id) = browser_player {
            if let Some((_, t)) = native.latest_transform(id) {
                let first = *first_seen.get_or_insert(t.position);
                let d = (t.position[0] - first[0]).hypot(t.position[2] - first[2]);
                browser_moved |= d >= 0.5;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if child.try_wait().expect("wait node").is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("node output");
    walking.store(false, Ordering::Relaxed);
    let _ = walker.join();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\nscreenshot: {}", shot.display());
    assert!(
        output.status.success(),
        "play.mjs over {transport} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains(&format!("\"transport\": \"{transport}\"")),
        "joined over {transport}:\n{stdout}"
    );
    assert!(chat_seen, "the native client got the browser's chat");
    assert!(
        edited,
        "the browser's blueprint edit reached the native client"
    );
    assert!(
        browser_moved,
        "the native client saw the browser's player move"
    );
}

#[test]
fn the_demo_page_plays_over_webtransport_with_a_native_client() {
    the_page_plays_with_a_native_client_over("webtransport");
}

#[test]
fn the_demo_page_plays_over_the_websocket_fallback_with_a_native_client() {
    the_page_plays_with_a_native_client_over("websocket");
}
