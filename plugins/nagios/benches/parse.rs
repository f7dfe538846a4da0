//! Parse and map a status page of 10,000 services, generated at the shape of the real
//! Nagios 4.4.6 captures (the test kit's `nagios` module), in both forms: status.cgi HTML and
//! statusjson.cgi JSON. "map" is [`HostRules::map_alarms`] with two regex rules.
//!
//! Run: `cargo bench -p synchronizer-nagios --bench parse`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use synchronizer_nagios::{
    HostRules, HostRulesConfig, parse_hostlist, parse_servicelist, parse_status_page,
};
use synchronizer_test_kit::nagios::{Shape, hostlist_json, servicelist_json, status_html};

fn rules() -> HostRules {
    let config: HostRulesConfig = serde_json::from_str(
        r#"{"rules": [{"pattern": "instance-(.+)", "key": "nova.instance:$1"},
                      {"pattern": "compute-(\\d+)", "key": "nova.host:node-$1"}]}"#,
    )
    .expect("rules config");
    HostRules::new(&config).expect("rules")
}

fn bench(c: &mut Criterion) {
    let shape = Shape::TEN_THOUSAND;
    let html = status_html(shape);
    let json = servicelist_json(shape);
    let hosts = hostlist_json(shape);
    let rules = rules();

    let mut group = c.benchmark_group("10k-services");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));

    group.throughput(Throughput::Bytes(html.len() as u64));
    group.bench_function("html/parse", |b| {
        b.iter(|| parse_status_page(black_box(html.as_bytes())).expect("parses"))
    });
    group.bench_function("html/parse+map", |b| {
        b.iter(|| {
            let statuses = parse_status_page(black_box(html.as_bytes())).expect("parses");
            let alarms = rules.map_alarms(&statuses);
            black_box(alarms.len());
        })
    });

    group.throughput(Throughput::Bytes(json.len() as u64));
    group.bench_function("json/parse", |b| {
        b.iter(|| parse_servicelist(black_box(json.as_bytes())).expect("parses"))
    });
    group.bench_function("json/parse+map", |b| {
        b.iter(|| {
            let services = parse_servicelist(black_box(json.as_bytes())).expect("parses");
            let alarms = rules.map_alarms(&services.entries);
            black_box(alarms.len());
        })
    });
    group.throughput(Throughput::Bytes((json.len() + hosts.len()) as u64));
    group.bench_function("json/servicelist+hostlist+map", |b| {
        b.iter(|| {
            let mut entries = parse_servicelist(black_box(json.as_bytes()))
                .expect("parses")
                .entries;
            entries.extend(
                parse_hostlist(black_box(hosts.as_bytes()))
                    .expect("parses")
                    .entries,
            );
            let alarms = rules.map_alarms(&entries);
            black_box(alarms.len());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
