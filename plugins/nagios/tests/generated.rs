//! The 10,000-service pages the benchmark measures parse completely and agree.

use synchronizer_nagios::{
    HostRules, HostRulesConfig, parse_hostlist, parse_servicelist, parse_status_page,
};
use synchronizer_test_kit::nagios::{
    Shape, expected_alarms, hostlist_json, servicelist_json, status_html,
};

#[test]
fn generated_pages_parse_to_ten_thousand_services() {
    let shape = Shape::TEN_THOUSAND;
    let html = status_html(shape);
    let json = servicelist_json(shape);
    let hosts = hostlist_json(shape);
    assert!(html.len() > 7_000_000, "{}", html.len());
    assert!(json.len() > 15_000_000, "{}", json.len());

    let from_html = parse_status_page(html.as_bytes()).expect("html parses");
    let services_html: Vec<_> = from_html.iter().filter(|s| !s.is_host()).collect();
    assert_eq!(services_html.len(), 10_000);
    let from_json = parse_servicelist(json.as_bytes())
        .expect("json parses")
        .entries;
    assert_eq!(from_json.len(), 10_000);
    for (h, j) in services_html.iter().zip(&from_json) {
        assert_eq!(
            (&h.host, &h.service, h.state, &h.output, h.attempt),
            (&j.host, &j.service, j.state, &j.output, j.attempt)
        );
    }
    let host_list = parse_hostlist(hosts.as_bytes())
        .expect("hostlist parses")
        .entries;
    assert_eq!(host_list.len(), 500);

    let config: HostRulesConfig = serde_json::from_str(
        r#"{"rules": [{"pattern": "instance-(.+)", "key": "nova.instance:$1"},
                      {"pattern": "compute-(\\d+)", "key": "nova.host:node-$1"}]}"#,
    )
    .unwrap();
    let rules = HostRules::new(&config).unwrap();
    let alarms_html = rules.map_alarms(&from_html);
    assert_eq!(alarms_html.len(), expected_alarms(shape));
    let mut from_json_all = from_json.clone();
    from_json_all.extend(host_list);
    assert_eq!(
        rules.map_alarms(&from_json_all).len(),
        expected_alarms(shape)
    );
    assert_eq!(alarms_html[0].resource_key, "nova.host:node-0");
}
