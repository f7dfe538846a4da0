//! The collector against a loopback server replaying the real captures
//! (tests/fixtures/nagios4-fidelity): a server that closes a kept-alive connection as the
//! next request arrives (Apache's KeepAliveTimeout racing a poll), and statusjson data an
//! hour old.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use synchronizer_nagios::plugin::{Config, Nagios};
use synchronizer_plugin_api::{Context, Plugin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SERVICES: &[u8] = include_bytes!("fixtures/nagios4-fidelity/statusjson-servicelist.json");
const HOSTS: &[u8] = include_bytes!("fixtures/nagios4-fidelity/statusjson-hostlist.json");

/// Serves `services` and `hosts`; with `close_second`, the second request on a
/// connection is read and the connection closed without an answer. Returns the port and
/// the count of connections.
async fn serve(services: Vec<u8>, hosts: Vec<u8>, close_second: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    let (services, hosts) = (Arc::new(services), Arc::new(hosts));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (services, hosts) = (services.clone(), hosts.clone());
            tokio::spawn(async move {
                let mut served = 0;
                loop {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    served += 1;
                    if close_second && served == 2 {
                        return; // closed before the answer
                    }
                    let text = String::from_utf8_lossy(&req);
                    let body = if text.contains("query=hostlist") {
                        &hosts
                    } else {
                        &services
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
                        body.len()
                    );
                    if sock.write_all(head.as_bytes()).await.is_err()
                        || sock.write_all(body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, conns)
}

fn plugin(port: u16) -> Nagios {
    let config: Config = serde_json::from_value(serde_json::json!({
        "url": format!("http://127.0.0.1:{port}/cgi-bin/nagios4"),
    }))
    .unwrap();
    Nagios::new(
        config,
        &Context {
            instance: "loop".into(),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_connection_closed_before_the_answer_is_retried_once() {
    let (port, conns) = serve(SERVICES.to_vec(), HOSTS.to_vec(), true).await;
    let n = plugin(port);
    let snap = n
        .snapshot(&[])
        .await
        .expect("the hostlist GET is retried on a new connection");
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "the retry opened a second connection"
    );
    assert!(!snap.entities().is_empty());
    assert!(
        !format!("{snap:?}").contains("incomplete: [(\"nagios\""),
        "complete"
    );
    assert!(n.health().await.healthy);
}

#[tokio::test]
async fn an_hour_old_status_is_degraded_and_deletes_nothing() {
    let text = String::from_utf8(SERVICES.to_vec()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let query_time = v["result"]["query_time"].as_i64().unwrap();
    let updated = v["result"]["last_data_update"].as_i64().unwrap();
    let old = text.replacen(
        &format!("\"last_data_update\": {updated}"),
        &format!("\"last_data_update\": {}", query_time - 3_600_000),
        1,
    );
    assert_ne!(old, text, "the capture's last_data_update was replaced");
    let (port, _) = serve(old.into_bytes(), HOSTS.to_vec(), false).await;
    let n = plugin(port);
    let snap = n.snapshot(&[]).await.expect("stale data still answers");
    let shown = format!("{snap:?}");
    assert!(
        shown.contains("incomplete: [(\"nagios\""),
        "marked incomplete: nothing is deleted: {shown}"
    );
    assert!(!snap.entities().is_empty(), "alarms are still reported");
    let health = n.health().await;
    assert!(!health.healthy, "degraded");
    assert!(health.message.contains("1h old"), "{}", health.message);

    // A fresh answer makes it healthy again.
    let (port, _) = serve(SERVICES.to_vec(), HOSTS.to_vec(), false).await;
    let fresh = plugin(port);
    fresh.snapshot(&[]).await.unwrap();
    assert!(fresh.health().await.healthy);
}
