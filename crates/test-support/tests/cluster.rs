//! `RedisCluster` against the real programs: the helpers other tests lean on must do what they say.

use std::net::TcpStream;

use wsguard_test_support::RedisCluster;

fn addr(url: &str) -> &str {
    url.trim_start_matches("redis://").trim_end_matches('/')
}

#[test]
fn three_masters_form_one_cluster_that_survives_a_master_restart() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    assert_eq!(cluster.seed_urls(), urls);
    let mut distinct = urls.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{urls:?}");
    assert_eq!(cluster.dbsizes(), [0, 0, 0]);

    cluster.stop(1);
    assert_eq!(cluster.seed_urls(), [urls[0].clone(), urls[2].clone()]);
    assert!(
        TcpStream::connect(addr(&urls[1])).is_err(),
        "master 1 still answers"
    );
    assert_eq!(cluster.dbsizes()[1], 0);

    cluster.restart(1);
    assert_eq!(cluster.seed_urls(), urls);
    assert_eq!(cluster.url(1), urls[1]);
    assert!(cluster.keys(1).is_empty());
    drop(cluster);
    for url in &urls {
        assert!(
            TcpStream::connect(addr(url)).is_err(),
            "{url} outlived the cluster"
        );
    }
}

#[test]
fn a_cluster_stopped_entirely_comes_back_with_restart_all() {
    let mut cluster = RedisCluster::start();
    let urls = cluster.urls();
    for i in 0..3 {
        cluster.stop(i);
    }
    assert!(cluster.seed_urls().is_empty());
    cluster.restart_all();
    assert_eq!(cluster.seed_urls(), urls);
    assert_eq!(cluster.dbsizes(), [0, 0, 0]);
}

#[test]
fn two_clusters_at_once_get_their_own_ports() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(RedisCluster::start);
        let b = s.spawn(RedisCluster::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut all: Vec<String> = a.urls().into_iter().chain(b.urls()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6);
}
