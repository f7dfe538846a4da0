//! Pages and answers that are not a complete status: each is a clear error, never an
//! empty or partial list. Most are real answers of the test Nagios (scripts/nagios) or
//! real captures altered the way a server or a new version would alter them.

use synchronizer_nagios::{
    HtmlError, JsonError, parse_hostlist, parse_servicelist, parse_status_page,
};
use synchronizer_test_kit::nagios::{replace_all, replace_once};

const NAGIOS4: &[u8] = include_bytes!("fixtures/nagios4/status-host-all.html");
const VITRAGE_MOCK: &[u8] = include_bytes!("fixtures/vitrage/nagios-mock.html");
const SERVICELIST: &[u8] = include_bytes!("fixtures/nagios4/statusjson-servicelist.json");
const HOSTLIST: &[u8] = include_bytes!("fixtures/nagios4/statusjson-hostlist.json");
const LIVE_401: &[u8] = include_bytes!("fixtures/nagios4-live/auth-401.html");
const LIVE_404: &[u8] = include_bytes!("fixtures/nagios4-live/apache-404.html");
const LIVE_STOPPED_HTML: &[u8] = include_bytes!("fixtures/nagios4-live/status-nagios-stopped.html");
const LIVE_STOPPED_JSON: &[u8] =
    include_bytes!("fixtures/nagios4-live/statusjson-nagios-stopped.json");
const LIVE_HOSTDETAIL: &[u8] = include_bytes!("fixtures/nagios4-live/status-hostdetail.html");
const LIVE_NODETAILS: &[u8] =
    include_bytes!("fixtures/nagios4-live/statusjson-servicelist-nodetails.json");
const LIVE_BOGUS: &[u8] = include_bytes!("fixtures/nagios4-live/statusjson-query-bogus.json");
const LIVE_NOSUCHHOST: &[u8] =
    include_bytes!("fixtures/nagios4-live/statusjson-servicelist-nosuchhost.json");

// ------------------------------------------------------------------------------ HTML

#[test]
fn empty_body() {
    assert_eq!(parse_status_page(b""), Err(HtmlError::Empty));
    assert_eq!(parse_status_page(b" \r\n\t"), Err(HtmlError::Empty));
}

#[test]
fn web_server_error_page() {
    let err = parse_status_page(LIVE_404).unwrap_err();
    assert_eq!(
        err,
        HtmlError::NoStatusTable {
            title: Some("404 Not Found".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "not a Nagios service status page: no <table class='status'> (title \"404 Not Found\")"
    );
    let page = b"<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>";
    assert_eq!(
        parse_status_page(page),
        Err(HtmlError::NoStatusTable {
            title: Some("500 Internal Server Error".into())
        })
    );
}

#[test]
fn basic_auth_refused() {
    assert_eq!(
        parse_status_page(LIVE_401),
        Err(HtmlError::LoginPage {
            title: Some("401 Unauthorized".into())
        })
    );
}

#[test]
fn login_form() {
    let page = br#"<!DOCTYPE html><html><head><title>Nagios XI - Login</title></head>
<body><form method="post" action="/nagiosxi/login.php"><input type="text" name="username">
<input TYPE='Password' name="password"><input type="submit" value="Login"></form></body></html>"#;
    assert_eq!(
        parse_status_page(page),
        Err(HtmlError::LoginPage {
            title: Some("Nagios XI - Login".into())
        })
    );
}

#[test]
fn nagios_not_running() {
    let err = parse_status_page(LIVE_STOPPED_HTML).unwrap_err();
    assert_eq!(
        err,
        HtmlError::NagiosError {
            message: "Error: Could not read host and service status information!".into()
        }
    );
}

/// The capture with its service rows removed and `message` after the table, as status.cgi
/// prints it when the user may see no service or when there is no status data.
fn page_with_message(message: &str) -> Vec<u8> {
    let text = std::str::from_utf8(NAGIOS4).unwrap();
    let header_end = text
        .find("<th class='status'>Status Information</th>\n</tr>\n")
        .unwrap()
        + "<th class='status'>Status Information</th>\n</tr>\n".len();
    let table_end = text.rfind("</table>\n").unwrap();
    format!(
        "{}{}{message}\n{}",
        &text[..header_end],
        "</table>\n",
        &text[table_end + "</table>\n".len()..]
    )
    .into_bytes()
}

#[test]
fn no_permission_page() {
    let page = page_with_message(
        "<P><div class='errorMessage'>It appears as though you do not have permission to view information for any of the services you requested...</div></P>",
    );
    assert_eq!(
        parse_status_page(&page),
        Err(HtmlError::NagiosError {
            message: "It appears as though you do not have permission to view information for any of the services you requested...".into()
        })
    );
}

#[test]
fn no_status_data_page() {
    let page = page_with_message(
        "<p><div class='infoMessage'>There doesn't appear to be any service status information in the status log...<br><br>\nMake sure that Nagios is running and that you have specified the location of you status log correctly in the configuration files.</div></p>",
    );
    let err = parse_status_page(&page).unwrap_err();
    assert!(
        matches!(&err, HtmlError::NagiosError { message } if message.starts_with("There doesn't appear to be any service status information")),
        "{err:?}"
    );
}

#[test]
fn a_table_of_another_page() {
    // status.cgi?hostgroup=all&style=hostdetail also has a table class='status'.
    assert_eq!(
        parse_status_page(LIVE_HOSTDETAIL),
        Err(HtmlError::HeaderChanged {
            found: [
                "Host",
                "Status",
                "Last Check",
                "Duration",
                "Status Information"
            ]
            .map(String::from)
            .to_vec()
        })
    );
}

#[test]
fn page_without_status_table() {
    let page = replace_once(
        NAGIOS4,
        "class='status'>\n<tr>\n<th",
        "class='servicestatus'>\n<tr>\n<th",
    );
    assert_eq!(
        parse_status_page(&page),
        Err(HtmlError::NoStatusTable {
            title: Some("Current Network Status".into())
        })
    );
}

#[test]
fn header_with_an_added_column() {
    let page = replace_once(
        NAGIOS4,
        "<th class='status'>Status Information</th>",
        "<th class='status'>Status Information</th><th class='status'>Notes</th>",
    );
    let err = parse_status_page(&page).unwrap_err();
    let HtmlError::HeaderChanged { found } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(found.len(), 8);
    assert_eq!(found[7], "Notes");
}

#[test]
fn rows_with_an_added_cell() {
    // Every service row gets an eighth cell while the header stays as it was.
    let page = replace_all(NAGIOS4, "valign='center'>", "valign='center'>x</td><td>");
    let err = parse_status_page(&page).unwrap_err();
    assert!(
        matches!(
            &err,
            HtmlError::RowShape {
                row: 1,
                cells: 8,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("the status table's row 1 has 8 cells"),
        "{err}"
    );
}

#[test]
fn rows_with_a_missing_cell() {
    let page = replace_all(NAGIOS4, "<td class='statusBGWARNING'>4/4</td>\n", "");
    assert!(
        matches!(
            parse_status_page(&page),
            Err(HtmlError::RowShape {
                row: 1,
                cells: 6,
                ..
            })
        ),
        "{:?}",
        parse_status_page(&page)
    );
}

#[test]
fn one_cell_row_with_text() {
    let page = replace_all(
        NAGIOS4,
        "<tr><td colspan='6'></td></tr>",
        "<tr><td colspan='6'>No more services</td></tr>",
    );
    assert_eq!(
        parse_status_page(&page),
        Err(HtmlError::RowShape {
            row: 3,
            cells: 1,
            text: "No more services".into()
        })
    );
}

#[test]
fn unknown_status_word() {
    let page = replace_once(
        NAGIOS4,
        "<td class='statusWARNING'>WARNING</td>",
        "<td class='statusWARNING'>WARN</td>",
    );
    assert_eq!(
        parse_status_page(&page),
        Err(HtmlError::BadCell {
            row: 1,
            column: "Status",
            value: "WARN".into(),
            reason: "not OK, WARNING, CRITICAL, UNKNOWN or PENDING"
        })
    );
}

#[test]
fn unreadable_attempt() {
    let page = replace_once(
        NAGIOS4,
        "<td class='statusEven'>1/4</td>\n<td class='statusEven' valign='center'>OK: load",
        "<td class='statusEven'>one of four</td>\n<td class='statusEven' valign='center'>OK: load",
    );
    assert!(
        matches!(
            parse_status_page(&page),
            Err(HtmlError::BadCell {
                row: 5,
                column: "Attempt",
                ..
            })
        ),
        "{:?}",
        parse_status_page(&page)
    );
}

#[test]
fn first_row_without_host() {
    let page = replace_once(
        NAGIOS4,
        "<a href='extinfo.cgi?type=1&host=compute-0' title='127.0.0.1'>compute-0</a>",
        "",
    );
    assert!(
        matches!(
            parse_status_page(&page),
            Err(HtmlError::BadCell {
                row: 1,
                column: "Host",
                ..
            })
        ),
        "{:?}",
        parse_status_page(&page)
    );
}

#[test]
fn service_without_name() {
    let page = replace_once(
        NAGIOS4,
        "<a href='extinfo.cgi?type=2&host=compute-0&service=Disk+usage'>Disk usage</a>",
        "",
    );
    assert!(
        matches!(
            parse_status_page(&page),
            Err(HtmlError::BadCell {
                row: 2,
                column: "Service",
                ..
            })
        ),
        "{:?}",
        parse_status_page(&page)
    );
}

#[test]
fn truncated_anywhere_is_an_error() {
    for (name, page) in [("nagios4", NAGIOS4), ("vitrage", VITRAGE_MOCK)] {
        let html_end = page
            .windows(7)
            .rposition(|w| w == b"</html>")
            .expect("</html>");
        let marker = b"width=100% class='status'>";
        let table_start = page
            .windows(marker.len())
            .position(|w| w == marker)
            .unwrap();
        let mut inside = 0;
        for cut in (0..html_end + 6).step_by(17) {
            let result = parse_status_page(&page[..cut]);
            let Err(err) = result else {
                panic!(
                    "{name} cut at {cut} parsed to {:?}",
                    result.map(|v| v.len())
                );
            };
            if cut > table_start + marker.len() && cut < page.len() - 400 {
                assert!(
                    matches!(&err, HtmlError::Truncated { place, .. } if place.starts_with("inside the status table")),
                    "{name} cut at {cut}: {err:?}"
                );
                inside += 1;
            }
        }
        assert!(inside > 200, "{name}: {inside}");
        // Whole page: fine.
        assert!(parse_status_page(&page[..html_end + 7]).is_ok(), "{name}");
    }
}

#[test]
fn truncation_message() {
    // Cut inside the fourth service row (localhost's first).
    let cut = NAGIOS4
        .windows(12)
        .position(|w| w == b"Current Load")
        .unwrap();
    let page = &NAGIOS4[..cut];
    let err = parse_status_page(page).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the status page is truncated: it ends after {cut} bytes, inside the status table after 3 service rows (no closing </table>)"
        )
    );
}

#[test]
fn header_only_table_without_message_is_an_empty_nagios() {
    // Real status.cgi always adds a message to an empty table (see no_status_data_page);
    // a bare header-only table is read as what it says.
    let page = page_with_message("");
    let page = replace_once(&page, "Results 1 - 11 of 11", "Results 1 - 0 of 0");
    assert_eq!(parse_status_page(&page), Ok(vec![]));
}

#[test]
fn invalid_utf8_is_replaced_not_fatal() {
    let page = replace_once(
        NAGIOS4,
        "WARNING: load average 7.1",
        "WARNING: load \u{1}average 7.1",
    );
    let page: Vec<u8> = page
        .into_iter()
        .map(|b| if b == 1 { 0xff } else { b })
        .collect();
    let parsed = parse_status_page(&page).expect("parses");
    assert_eq!(parsed[0].output, "WARNING: load \u{fffd}average 7.1");
}

// ------------------------------------------------------------------------------ JSON

#[test]
fn json_empty_body_as_when_nagios_is_stopped() {
    // statusjson.cgi answers 200 with an empty body (one newline) when Nagios is down.
    assert_eq!(parse_servicelist(LIVE_STOPPED_JSON), Err(JsonError::Empty));
    assert_eq!(parse_hostlist(b""), Err(JsonError::Empty));
}

#[test]
fn json_got_an_html_page() {
    let err = parse_servicelist(LIVE_401).unwrap_err();
    assert_eq!(
        err,
        JsonError::Html {
            title: Some("401 Unauthorized".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "the statusjson.cgi answer is an HTML page, not JSON (title \"401 Unauthorized\")"
    );
}

#[test]
fn json_truncated_anywhere_is_an_error() {
    for (name, body, hosts) in [
        ("servicelist", SERVICELIST, false),
        ("hostlist", HOSTLIST, true),
    ] {
        let end = body.iter().rposition(|&b| b == b'}').unwrap() + 1;
        for cut in (0..end).step_by(7) {
            let result = if hosts {
                parse_hostlist(&body[..cut])
            } else {
                parse_servicelist(&body[..cut])
            };
            let Err(err) = result else {
                panic!("{name} cut at {cut} parsed");
            };
            let leading_ws = body[..cut].iter().all(u8::is_ascii_whitespace);
            if !leading_ws {
                assert!(
                    matches!(err, JsonError::Truncated { .. }),
                    "{name} cut at {cut}: {err:?}"
                );
            }
        }
    }
    let err = parse_servicelist(&SERVICELIST[..5000]).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "the statusjson.cgi answer is truncated JSON (5000 bytes): EOF while parsing"
        ),
        "{err}"
    );
}

#[test]
fn json_list_without_details() {
    assert_eq!(
        parse_servicelist(LIVE_NODETAILS),
        Err(JsonError::NoDetails {
            query: "servicelist"
        })
    );
    let hostlist =
        br#"{"result": {"query": "hostlist", "type_code": 0}, "data": {"hostlist": {"h": 2}}}"#;
    assert_eq!(
        parse_hostlist(hostlist),
        Err(JsonError::NoDetails { query: "hostlist" })
    );
}

#[test]
fn json_nagios_errors() {
    assert_eq!(
        parse_servicelist(LIVE_BOGUS),
        Err(JsonError::NagiosError {
            type_code: 6,
            type_text: "Option Value Invalid".into(),
            message: "The query option value 'bogus' is invalid.".into()
        })
    );
    let err = parse_servicelist(LIVE_NOSUCHHOST).unwrap_err();
    assert_eq!(
        err.to_string(),
        "statusjson.cgi reports error 6 (Option Value Invalid): The host 'nosuchhost' could not be found."
    );
}

#[test]
fn json_answer_to_another_query() {
    assert_eq!(
        parse_servicelist(HOSTLIST),
        Err(JsonError::WrongQuery {
            expected: "servicelist",
            found: "hostlist".into()
        })
    );
    assert_eq!(
        parse_hostlist(SERVICELIST),
        Err(JsonError::WrongQuery {
            expected: "hostlist",
            found: "servicelist".into()
        })
    );
}

fn shape_error(body: &str) -> String {
    match parse_servicelist(body.as_bytes()) {
        Err(JsonError::Shape { message }) => message,
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn json_of_another_shape() {
    assert_eq!(
        shape_error(r#"{"data": {"servicelist": {}}}"#),
        "no `result` object"
    );
    assert_eq!(
        shape_error(r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {}}"#),
        "no `data.servicelist` object"
    );
    assert_eq!(
        shape_error(r#"{"result": {"query": "servicelist", "type_code": 0}}"#),
        "no `data.servicelist` object"
    );
    assert!(
        shape_error(r#"[1, 2]"#)
            .starts_with("invalid type: sequence, expected a statusjson.cgi answer object")
    );
    assert!(
        shape_error(
            r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {"servicelist": []}}"#
        )
        .starts_with("invalid type: sequence, expected the `servicelist` object")
    );
    assert!(
        shape_error(r#"{"result": {"query": "servicelist"}, "data": {"servicelist": {}}}"#)
            .starts_with("missing field `type_code`")
    );
    assert!(
        shape_error(r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {"servicelist": {"h": {"s": {"plugin_output": "x"}}}}}"#)
            .starts_with("missing field `status`")
    );
    assert!(
        shape_error(r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {"servicelist": {"h": {"s": {"status": "ok"}}}}}"#)
            .starts_with("invalid type: string \"ok\", expected i64")
    );
}

#[test]
fn json_unknown_status_code() {
    let body = r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {"servicelist": {"compute-0": {"CPU load": {"status": 3}}}}}"#;
    assert_eq!(
        parse_servicelist(body.as_bytes()),
        Err(JsonError::UnknownStatus {
            kind: "service",
            name: "compute-0;CPU load".into(),
            code: 3
        })
    );
    let body = r#"{"result": {"query": "hostlist", "type_code": 0}, "data": {"hostlist": {"h": {"status": 16}}}}"#;
    assert_eq!(
        parse_hostlist(body.as_bytes()),
        Err(JsonError::UnknownStatus {
            kind: "host",
            name: "h".into(),
            code: 16
        })
    );
}

#[test]
fn json_trailing_garbage_and_syntax() {
    let mut body = SERVICELIST.to_vec();
    body.extend_from_slice(b"\n<!-- proxy -->");
    assert!(matches!(
        parse_servicelist(&body),
        Err(JsonError::Syntax { .. })
    ));
    assert!(matches!(
        parse_servicelist(b"{\"result\": nope}"),
        Err(JsonError::Syntax { .. })
    ));
}

#[test]
fn json_empty_list_is_an_empty_nagios() {
    let body = r#"{"result": {"query": "servicelist", "type_code": 0}, "data": {"selectors": {}, "servicelist": {}}}"#;
    assert_eq!(
        parse_servicelist(body.as_bytes()).map(|l| l.entries),
        Ok(vec![])
    );
}
