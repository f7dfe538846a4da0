//! Parser of the service status page that Nagios 3 and 4 both serve:
//! `status.cgi?host=all&limit=0`.
//!
//! It reads the page the way OpenStack Vitrage's `NagiosParser` does: the table with
//! `class='status'`, its first row the header, then one row of seven cells per service
//! (host, service, status, last check, duration, attempt, status information). The host
//! cell is empty when the service belongs to the host of the row above; the host and
//! service names are the text of the first link in their cells; the two one-cell rows
//! Nagios puts between hosts are skipped.
//!
//! Where it differs from Vitrage, on purpose:
//! - Texts are entity-decoded and trimmed of surrounding white space, including the
//!   non-breaking space status.cgi appends to the output (`high CPU load&nbsp;` gives
//!   `high CPU load`, where Vitrage keeps `"high CPU load\xa0"`). The output then reads
//!   the same as statusjson.cgi's `plugin_output`. A `<br>` in the output becomes `\n`.
//! - A page that is not a complete, unpaginated service status page is an error
//!   ([`HtmlError`]), never an empty or partial list: an error page, a login page, a page
//!   without the status table, a header or row of another shape, a cell it cannot read,
//!   a page cut short (no closing `</table>` or `</html>`), a page showing only part of
//!   the services (`Results 0 - 100 of 757`: request `limit=0`), or one of Nagios' own
//!   messages: `errorMessage` (no permission, status data unreadable) or `infoMessage`
//!   (no service status data at all; a Nagios without a single service is taken for a
//!   broken one, so that its alarms are not all deleted), or the CGIs' "Whoops!" page
//!   (`Error: Could not read host and service status information!`: Nagios is not
//!   running).
//! - A host shown DOWN or UNREACHABLE (status.cgi colours its cell `statusHOSTDOWN…` /
//!   `statusHOSTUNREACHABLE…`) also yields an entry for the host itself, before its first
//!   service; this page does not show the host's output, so that entry's `output` is empty.
//!
//! A page whose table lists no service (an empty Nagios) parses to an empty list.
//!
//! It is a hand-written scanner over the bytes (tags found with `memchr`, no DOM), so a
//! page of 10,000 services parses in a few milliseconds: see the crate's README.

use std::borrow::Cow;
use std::collections::HashSet;

use memchr::{memchr, memchr3, memmem};

use crate::model::{AlarmState, Attempt, CheckTime, ServiceStatus};

/// The header status.cgi prints over the service table.
pub const EXPECTED_HEADER: [&str; 7] = [
    "Host",
    "Service",
    "Status",
    "Last Check",
    "Duration",
    "Attempt",
    "Status Information",
];

/// Why a page is not a usable status page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HtmlError {
    /// The body is empty or only white space.
    #[error("the status page is empty")]
    Empty,
    /// Nagios answered with one of its own messages (`<div class='errorMessage'>` or
    /// `<div class='infoMessage'>`) instead of, or after an empty, status table.
    #[error("Nagios reports an error instead of the service status: {message}")]
    NagiosError {
        /// The message's text.
        message: String,
    },
    /// A login form or an authentication error page instead of the status page.
    #[error(
        "got a login or authentication page instead of the Nagios status page ({}): check the credentials", show_title(.title)
    )]
    LoginPage {
        /// The page's `<title>`, if any.
        title: Option<String>,
    },
    /// A complete HTML page without the service status table: an error page of the web
    /// server, another CGI, another product.
    #[error("not a Nagios service status page: no <table class='status'> ({})", show_title(.title))]
    NoStatusTable {
        /// The page's `<title>`, if any.
        title: Option<String>,
    },
    /// The page ends before it is complete.
    #[error("the status page is truncated: it ends after {len} bytes, {place}")]
    Truncated {
        /// The body's length.
        len: usize,
        /// Where it stops: before the table, inside it (after how many rows), after it.
        place: String,
    },
    /// The table's header row is not the seven columns this parser reads.
    #[error("the status table's header changed: expected {expected:?}, found {found:?}", expected = EXPECTED_HEADER)]
    HeaderChanged {
        /// The header cells found.
        found: Vec<String>,
    },
    /// A row has neither seven cells (a service) nor at most one empty cell (a separator).
    #[error(
        "the status table's row {row} has {cells} cells, expected 7 (a service) or 1 empty one (a separator): {text:?}"
    )]
    RowShape {
        /// Row number in the table, the header being row 0.
        row: usize,
        /// Number of cells found.
        cells: usize,
        /// The row's text (cut to 200 bytes).
        text: String,
    },
    /// A cell of a service row cannot be read.
    #[error("the status table's row {row}: bad {column} cell {value:?}: {reason}")]
    BadCell {
        /// Row number in the table, the header being row 0.
        row: usize,
        /// The column's header.
        column: &'static str,
        /// The cell's text.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The page shows only some of the services (status.cgi's result limit).
    #[error(
        "the status page lists only results {first} - {last} of {total}: request status.cgi with limit=0"
    )]
    Paginated {
        /// First result shown.
        first: u64,
        /// Last result shown.
        last: u64,
        /// Number of matching services.
        total: u64,
    },
}

/// How an error names a page's title: `title "404 Not Found"`, or `no title`.
pub(crate) fn show_title(title: &Option<String>) -> String {
    match title {
        Some(t) => format!("title \"{t}\""),
        None => "no title".to_owned(),
    }
}

/// Parses a `status.cgi?host=all&limit=0` page (Nagios 3 or 4) into one entry per service
/// row, plus one per host shown DOWN or UNREACHABLE, in page order.
///
/// The body is read as UTF-8; invalid bytes become U+FFFD.
pub fn parse_status_page(body: &[u8]) -> Result<Vec<ServiceStatus>, HtmlError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(HtmlError::Empty);
    }
    let mut scanner = Scanner::new(body);

    // Before the table: remember what tells a login or error page apart.
    let mut title: Option<String> = None;
    let mut error_message: Option<String> = None;
    let mut password_input = false;
    let mut whoops = false;
    loop {
        let Some(tag) = scanner.next_tag() else {
            return Err(classify_tableless(
                body,
                title,
                error_message,
                password_input,
            ));
        };
        if tag.end {
            continue;
        }
        if tag.is(Kind::Table) && has_class(tag.attrs, b"status") {
            break;
        } else if tag.is(Kind::Title) && title.is_none() {
            let text = scanner.raw_text_until_end_tag(b"title");
            title = Some(cell_text(text));
        } else if tag.is(Kind::Div) && error_message.is_none() && is_message(tag.attrs) {
            error_message = Some(one_line(&scanner.element_text(Kind::Div)));
        } else if tag.is(Kind::H1) && error_message.is_none() {
            // The CGIs' "Whoops!" page: "Error: Could not read host and service status
            // information!" (Nagios is not running), or object configuration data.
            whoops = scanner.element_text(Kind::H1) == "Whoops!";
        } else if whoops && tag.is(Kind::P) && error_message.is_none() {
            let text = one_line(&scanner.element_text(Kind::P));
            if !text.is_empty() {
                error_message = Some(text);
            }
        } else if tag.is(Kind::Input)
            && attr(tag.attrs, b"type").is_some_and(|t| t.eq_ignore_ascii_case(b"password"))
        {
            password_input = true;
        }
    }

    let mut table = TableParser::new(body);
    // A service row of status.cgi is 700 to 1,100 bytes.
    table.out.reserve(body.len() / 900);
    let table_end = table.run(&mut scanner)?;
    debug_assert!(table_end <= body.len());

    // After the table: Nagios' error message, the result counts, the end of the page.
    let mut html_closed = false;
    let mut totals: Option<(u64, u64, u64)> = None;
    while let Some(tag) = scanner.next_tag() {
        if tag.end {
            if tag.is(Kind::Html) {
                html_closed = true;
            }
            continue;
        }
        if tag.is(Kind::Div) {
            if error_message.is_none() && is_message(tag.attrs) {
                error_message = Some(one_line(&scanner.element_text(Kind::Div)));
            } else if totals.is_none() && has_class(tag.attrs, b"itemTotalsTitle") {
                totals = parse_totals(&scanner.element_text(Kind::Div));
            }
        }
    }
    if let Some(message) = error_message {
        return Err(HtmlError::NagiosError { message });
    }
    if !html_closed {
        return Err(HtmlError::Truncated {
            len: body.len(),
            place: "after the status table, before </html>".into(),
        });
    }
    if let Some((first, last, total)) = totals {
        if first > 1 || last < total {
            return Err(HtmlError::Paginated { first, last, total });
        }
    }
    Ok(table.out)
}

/// The `Last Updated:` line of status.cgi's info box (`Wed Nov 25 09:33:53 UTC 2026`:
/// when the CGI made the page, in the Nagios server's local time, whatever its
/// `date_format`) as seconds since the epoch, the local time read as UTC. With the
/// HTTP `Date` header of the same answer (the server's clock in UTC) it gives the
/// server's UTC offset ([`utc_offset`]).
pub fn last_updated(body: &[u8]) -> Option<i64> {
    let at = memmem::find(body, b"Last Updated:")? + b"Last Updated:".len();
    let rest = &body[at..body.len().min(at + 80)];
    let end = memchr3(b'<', b'\n', b'\r', rest).unwrap_or(rest.len());
    let text = std::str::from_utf8(&rest[..end]).ok()?;
    let f: Vec<&str> = text.split_whitespace().collect();
    // weekday month day HH:MM:SS [zone...] year
    if f.len() < 5 {
        return None;
    }
    let month = crate::model::month_number(f[1])?;
    let day = f[2].parse().ok()?;
    let (h, m, sec) = crate::model::parse_hms(f[3])?;
    let year = f[f.len() - 1].parse().ok()?;
    crate::model::civil_to_unix(year, month, day, h, m, sec)
}

/// The server's UTC offset in seconds, from its local time ([`last_updated`]) and its UTC
/// time (the `Date` header) at the same moment: their difference rounded to a quarter of
/// an hour (every zone's offset is a multiple of 15 minutes); `None` beyond ±14 h.
pub fn utc_offset(local: i64, utc: i64) -> Option<i64> {
    let diff = local - utc;
    let offset = (diff as f64 / 900.0).round() as i64 * 900;
    (offset.abs() <= 14 * 3600).then_some(offset)
}

/// What status.cgi does not say but its columns give, so that an entry of the HTML page
/// has the fields of the JSON one: `last_check` as a Unix time (the local text read in
/// `format`, minus the server's `utc_offset` in seconds, when known) and `state_type`
/// from the attempt (a problem below its last attempt is soft, else hard; Nagios sets
/// `current_attempt` to `max_attempts` when a state turns hard and keeps it there).
pub fn complete_fields(
    statuses: &mut [ServiceStatus],
    format: crate::model::DateFormat,
    utc_offset: Option<i64>,
) {
    for s in statuses {
        if let (Some(CheckTime::Local(text)), Some(offset)) = (&s.last_check, utc_offset) {
            if let Some(secs) = crate::model::parse_local_time(text, format) {
                s.last_check = Some(CheckTime::UnixMillis((secs - offset).saturating_mul(1000)));
            }
        }
        if s.state_type.is_none() {
            if let Some(a) = s.attempt {
                s.state_type = Some(if a.current < a.max && s.is_alarm() {
                    crate::model::StateType::Soft
                } else {
                    crate::model::StateType::Hard
                });
            }
        }
    }
}

/// Whether a `<div>` is one of Nagios' messages: `errorMessage` (no permission, status
/// data unreadable, unknown group) or `infoMessage` (no status data at all: "Make sure
/// that Nagios is running").
fn is_message(attrs: &[u8]) -> bool {
    has_class(attrs, b"errorMessage") || has_class(attrs, b"infoMessage")
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Tells why a page without the status table is not one.
fn classify_tableless(
    body: &[u8],
    title: Option<String>,
    error_message: Option<String>,
    password_input: bool,
) -> HtmlError {
    if let Some(message) = error_message {
        return HtmlError::NagiosError { message };
    }
    let title_says_login = title.as_deref().is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        [
            "401",
            "unauthorized",
            "login",
            "log in",
            "sign in",
            "authentication required",
        ]
        .iter()
        .any(|w| t.contains(w))
    });
    if password_input || title_says_login {
        return HtmlError::LoginPage { title };
    }
    if find_ignore_case(body, b"</html").is_none() {
        return HtmlError::Truncated {
            len: body.len(),
            place: "before the status table".into(),
        };
    }
    HtmlError::NoStatusTable { title }
}

/// `Results 1 - 11 of 11 Matching Services` → (1, 11, 11).
fn parse_totals(text: &str) -> Option<(u64, u64, u64)> {
    let rest = text.trim().strip_prefix("Results")?;
    let (first, rest) = rest.split_once('-')?;
    let (last, rest) = rest.split_once("of")?;
    let total = rest.split_whitespace().next()?;
    Some((
        first.trim().parse().ok()?,
        last.trim().parse().ok()?,
        total.parse().ok()?,
    ))
}

// ---------------------------------------------------------------------------------------
// The status table.

/// A top-level cell of the current row: byte ranges into the page.
#[derive(Clone, Copy, Default)]
struct Cell {
    /// Content, between `<td …>` and `</td>`.
    start: usize,
    end: usize,
    /// The `class` attribute's value.
    class: Option<(usize, usize)>,
    /// Content of the first link with text (host and service cells only).
    anchor: Option<(usize, usize)>,
}

struct TableParser<'a> {
    doc: &'a [u8],
    out: Vec<ServiceStatus>,
    cells: Vec<Cell>,
    row_open: bool,
    cell_open: bool,
    /// Start of the content of the `<a>` being read, when looking for a name link.
    anchor_start: Option<usize>,
    /// Rows seen, the header included.
    rows: usize,
    /// Service rows read.
    service_rows: usize,
    current_host: Option<String>,
    hosts_in_alarm: HashSet<String>,
}

impl<'a> TableParser<'a> {
    fn new(doc: &'a [u8]) -> Self {
        TableParser {
            doc,
            out: Vec::new(),
            cells: Vec::with_capacity(8),
            row_open: false,
            cell_open: false,
            anchor_start: None,
            rows: 0,
            service_rows: 0,
            current_host: None,
            hosts_in_alarm: HashSet::new(),
        }
    }

    /// Reads the table's rows up to its closing tag; returns the offset after it.
    fn run(&mut self, scanner: &mut Scanner<'a>) -> Result<usize, HtmlError> {
        let mut depth = 1usize;
        while let Some(tag) = scanner.next_tag() {
            if tag.is(Kind::Table) {
                if !tag.end {
                    depth += 1;
                    continue;
                }
                depth -= 1;
                if depth == 0 {
                    self.close_cell(tag.start);
                    self.close_row()?;
                    return Ok(tag.after);
                }
                continue;
            }
            if depth == 1 {
                if tag.is(Kind::Tr) {
                    self.close_cell(tag.start);
                    self.close_row()?;
                    if !tag.end {
                        self.row_open = true;
                    }
                    continue;
                }
                if tag.is(Kind::Td) || tag.is(Kind::Th) {
                    self.close_cell(tag.start);
                    if !tag.end {
                        if !self.row_open {
                            self.row_open = true;
                        }
                        self.cell_open = true;
                        self.anchor_start = None;
                        self.cells.push(Cell {
                            start: tag.after,
                            end: tag.after,
                            class: attr_range(tag.attrs_start, tag.attrs),
                            anchor: None,
                        });
                    }
                    continue;
                }
            }
            if self.cell_open && tag.is(Kind::A) && self.cells.len() <= 2 {
                let Some(cell) = self.cells.last().copied() else {
                    continue;
                };
                if cell.anchor.is_some() {
                    continue;
                }
                if !tag.end {
                    self.anchor_start = Some(tag.after);
                } else if let Some(start) = self.anchor_start.take() {
                    if !is_blank_text(&self.doc[start..tag.start]) {
                        if let Some(last) = self.cells.last_mut() {
                            last.anchor = Some((start, tag.start));
                        }
                    }
                }
            }
        }
        Err(HtmlError::Truncated {
            len: self.doc.len(),
            place: format!(
                "inside the status table after {} service rows (no closing </table>)",
                self.service_rows
            ),
        })
    }

    fn close_cell(&mut self, at: usize) {
        if self.cell_open {
            if let Some(cell) = self.cells.last_mut() {
                cell.end = at;
            }
            self.cell_open = false;
            self.anchor_start = None;
        }
    }

    fn close_row(&mut self) -> Result<(), HtmlError> {
        if !self.row_open {
            return Ok(());
        }
        self.row_open = false;
        let row = self.rows;
        self.rows += 1;
        let result = if row == 0 {
            self.header_row()
        } else {
            self.service_row(row)
        };
        self.cells.clear();
        result
    }

    fn text(&self, cell: &Cell) -> String {
        cell_text(&self.doc[cell.start..cell.end])
    }

    /// The text of a cell, borrowed from the page when it is plain text.
    fn text_ref(&self, cell: &Cell) -> Cow<'a, str> {
        let fragment: &'a [u8] = &self.doc[cell.start..cell.end];
        if memchr::memchr2(b'<', b'&', fragment).is_none() {
            if let Ok(text) = std::str::from_utf8(fragment) {
                return Cow::Borrowed(text.trim());
            }
        }
        Cow::Owned(cell_text(fragment))
    }

    fn header_row(&mut self) -> Result<(), HtmlError> {
        let found: Vec<String> = self.cells.iter().map(|c| self.text(c)).collect();
        if found.len() != EXPECTED_HEADER.len()
            || found.iter().zip(EXPECTED_HEADER).any(|(f, e)| f != e)
        {
            return Err(HtmlError::HeaderChanged { found });
        }
        Ok(())
    }

    fn service_row(&mut self, row: usize) -> Result<(), HtmlError> {
        let cells = std::mem::take(&mut self.cells);
        let result = self.service_cells(row, &cells);
        self.cells = cells;
        result
    }

    fn service_cells(&mut self, row: usize, cells: &[Cell]) -> Result<(), HtmlError> {
        let doc = self.doc;
        if cells.len() != 7 {
            let separator =
                cells.len() <= 1 && cells.iter().all(|c| is_blank_text(&doc[c.start..c.end]));
            if separator {
                return Ok(());
            }
            let (start, end) = match (cells.first(), cells.last()) {
                (Some(first), Some(last)) => (first.start, last.end),
                _ => (0, 0),
            };
            let mut text = cell_text(&doc[start..end]);
            truncate_at_char(&mut text, 200);
            return Err(HtmlError::RowShape {
                row,
                cells: cells.len(),
                text,
            });
        }
        let bad = |column: &'static str, value: String, reason: &'static str| HtmlError::BadCell {
            row,
            column,
            value,
            reason,
        };

        // Host: the first link's text; an empty cell means the host of the row above.
        let host_text = name_text(doc, &cells[0]);
        if !host_text.is_empty() {
            let host_state = cells[0]
                .class
                .and_then(|(s, e)| host_state_of_class(&doc[s..e]));
            if let Some(state) = host_state {
                if !self.hosts_in_alarm.contains(&host_text) {
                    self.hosts_in_alarm.insert(host_text.clone());
                    self.out
                        .push(ServiceStatus::new(host_text.clone(), None, state));
                }
            }
            self.current_host = Some(host_text);
        }
        let host = match &self.current_host {
            Some(h) => h.clone(),
            None => {
                return Err(bad(
                    "Host",
                    String::new(),
                    "empty host cell in the first service row",
                ));
            }
        };

        let service = name_text(doc, &cells[1]);
        if service.is_empty() {
            return Err(bad("Service", service, "no service name"));
        }

        let status_text = self.text_ref(&cells[2]);
        let Some(state) = AlarmState::from_service_text(&status_text) else {
            return Err(bad(
                "Status",
                status_text.into_owned(),
                "not OK, WARNING, CRITICAL, UNKNOWN or PENDING",
            ));
        };

        let last_check_text = self.text_ref(&cells[3]);
        let last_check = match &*last_check_text {
            "" | "N/A" => None,
            _ => Some(CheckTime::Local(last_check_text.into_owned())),
        };

        let duration_text = self.text_ref(&cells[4]);
        let duration = (!duration_text.is_empty()).then(|| duration_text.into_owned());

        let attempt_text = self.text_ref(&cells[5]);
        let Some(attempt) = Attempt::parse(&attempt_text) else {
            return Err(bad(
                "Attempt",
                attempt_text.into_owned(),
                "not <current>/<max>",
            ));
        };

        let output = self.text(&cells[6]);

        self.service_rows += 1;
        self.out.push(ServiceStatus {
            host,
            service: Some(service),
            state,
            output,
            last_check,
            duration,
            last_state_change: None,
            attempt: Some(attempt),
            state_type: None,
        });
        Ok(())
    }
}

/// The host or service name of a cell: its first link's text, else all its text.
fn name_text(doc: &[u8], cell: &Cell) -> String {
    match cell.anchor {
        Some((s, e)) => cell_text(&doc[s..e]),
        None => cell_text(&doc[cell.start..cell.end]),
    }
}

/// `statusHOSTDOWN`, `statusHOSTDOWNACK`, `statusHOSTDOWNSCHED` → DOWN; the same for
/// UNREACHABLE.
fn host_state_of_class(class: &[u8]) -> Option<AlarmState> {
    class.split(|b| b.is_ascii_whitespace()).find_map(|c| {
        let rest = strip_prefix_ignore_case(c, b"statusHOST")?;
        if strip_prefix_ignore_case(rest, b"DOWN").is_some() {
            Some(AlarmState::Down)
        } else if strip_prefix_ignore_case(rest, b"UNREACHABLE").is_some() {
            Some(AlarmState::Unreachable)
        } else {
            None
        }
    })
}

fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

// ---------------------------------------------------------------------------------------
// The tag scanner.

/// The tag names the parser acts on; the rest are `Other`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Table,
    Tr,
    Td,
    Th,
    A,
    Div,
    Title,
    Input,
    H1,
    P,
    Br,
    Script,
    Style,
    Html,
    Other,
}

impl Kind {
    #[inline(always)]
    fn of(name: &[u8]) -> Kind {
        if name.len() > 6 {
            return Kind::Other;
        }
        let mut lower = [0u8; 6];
        for (l, b) in lower.iter_mut().zip(name) {
            *l = b.to_ascii_lowercase();
        }
        match &lower[..name.len()] {
            b"table" => Kind::Table,
            b"tr" => Kind::Tr,
            b"td" => Kind::Td,
            b"th" => Kind::Th,
            b"a" => Kind::A,
            b"div" => Kind::Div,
            b"title" => Kind::Title,
            b"input" => Kind::Input,
            b"h1" => Kind::H1,
            b"p" => Kind::P,
            b"br" => Kind::Br,
            b"script" => Kind::Script,
            b"style" => Kind::Style,
            b"html" => Kind::Html,
            _ => Kind::Other,
        }
    }
}

/// A start or end tag.
#[derive(Clone, Copy)]
struct Tag<'a> {
    /// `</name>` rather than `<name>`.
    end: bool,
    kind: Kind,
    name: &'a [u8],
    /// The bytes between the name and `>`.
    attrs: &'a [u8],
    attrs_start: usize,
    /// Offset of `<`.
    start: usize,
    /// Offset after `>`.
    after: usize,
}

impl Tag<'_> {
    #[inline(always)]
    fn is(&self, kind: Kind) -> bool {
        self.kind == kind
    }
}

struct Scanner<'a> {
    doc: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(doc: &'a [u8]) -> Self {
        Scanner { doc, pos: 0 }
    }

    /// The next tag, skipping text, comments, doctypes and the content of `<script>` and
    /// `<style>`; `None` at the end of the page (or inside an unterminated tag).
    #[inline]
    fn next_tag(&mut self) -> Option<Tag<'a>> {
        let (tag, next) = next_tag_in(self.doc, self.pos)?;
        self.pos = next;
        if !tag.end && (tag.is(Kind::Script) || tag.is(Kind::Style)) {
            self.skip_raw_text(tag.name);
        }
        Some(tag)
    }

    /// Skips to after `</name…>` (raw text elements: nothing inside is a tag).
    fn skip_raw_text(&mut self, name: &[u8]) {
        let (_, after) = find_end_tag(self.doc, self.pos, name);
        self.pos = after;
    }

    /// The raw text up to `</name>`, moving past it.
    fn raw_text_until_end_tag(&mut self, name: &[u8]) -> &'a [u8] {
        let (end, after) = find_end_tag(self.doc, self.pos, name);
        let text = &self.doc[self.pos..end];
        self.pos = after;
        text
    }

    /// The text of the element just opened, up to its matching `</name>` (nested
    /// elements of the same name counted), moving past it.
    fn element_text(&mut self, kind: Kind) -> String {
        let start = self.pos;
        let mut depth = 1usize;
        let mut end = self.doc.len();
        while let Some(tag) = self.next_tag() {
            if tag.is(kind) {
                if tag.end {
                    depth -= 1;
                    if depth == 0 {
                        end = tag.start;
                        break;
                    }
                } else {
                    depth += 1;
                }
            }
        }
        cell_text(&self.doc[start..end])
    }
}

/// Finds `</name` from `pos` (any case): (its offset, the offset after its `>`), or the
/// end of the document twice.
fn find_end_tag(doc: &[u8], pos: usize, name: &[u8]) -> (usize, usize) {
    let finder = memmem::Finder::new(b"</");
    let mut from = pos;
    while let Some(i) = finder.find(&doc[from..]) {
        let at = from + i;
        let name_end = at + 2 + name.len();
        if name_end <= doc.len()
            && doc[at + 2..name_end].eq_ignore_ascii_case(name)
            && doc.get(name_end).is_none_or(|b| !b.is_ascii_alphanumeric())
        {
            let after = memchr(b'>', &doc[name_end..]).map_or(doc.len(), |j| name_end + j + 1);
            return (at, after);
        }
        from = at + 2;
    }
    (doc.len(), doc.len())
}

/// What starts at a `<`.
enum Markup<'a> {
    /// A start or end tag.
    Tag(Tag<'a>),
    /// A comment, doctype or processing instruction, ending before this offset.
    Skip(usize),
    /// Not markup: a `<` in text.
    Text,
}

/// Reads the markup at `lt` (a `<`); `None` when it is not terminated.
#[inline(always)]
fn markup_at(doc: &[u8], lt: usize) -> Option<Markup<'_>> {
    let rest = &doc[lt + 1..];
    Some(match rest.first().copied() {
        Some(b'!') => {
            if rest.starts_with(b"!--") {
                let close = memmem::find(&rest[3..], b"-->")?;
                Markup::Skip(lt + 1 + 3 + close + 3)
            } else {
                Markup::Skip(lt + 1 + memchr(b'>', rest)? + 1)
            }
        }
        Some(b'?') => Markup::Skip(lt + 1 + memchr(b'>', rest)? + 1),
        Some(b'/') if rest.get(1).is_some_and(u8::is_ascii_alphabetic) => {
            Markup::Tag(tag_at(doc, lt, lt + 2, true)?)
        }
        Some(c) if c.is_ascii_alphabetic() => Markup::Tag(tag_at(doc, lt, lt + 1, false)?),
        _ => Markup::Text,
    })
}

/// The next tag from `pos`, skipping text, comments and declarations: (tag, offset after
/// it); `None` at the end of the document or in unterminated markup.
#[inline(always)]
fn next_tag_in(doc: &[u8], pos: usize) -> Option<(Tag<'_>, usize)> {
    let mut from = pos;
    loop {
        let lt = from + memchr(b'<', doc.get(from..)?)?;
        match markup_at(doc, lt)? {
            Markup::Tag(tag) => return Some((tag, tag.after)),
            Markup::Skip(after) => from = after,
            Markup::Text => from = lt + 1,
        }
    }
}

/// The tag whose name starts at `name_start`; `None` when its `>` is missing.
#[inline(always)]
fn tag_at(doc: &[u8], start: usize, name_start: usize, end: bool) -> Option<Tag<'_>> {
    let mut i = name_start;
    while i < doc.len() && !matches!(doc[i], b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/' | b'>') {
        i += 1;
    }
    let name = &doc[name_start..i];
    // Find the closing '>', skipping quoted attribute values.
    let mut j = i;
    loop {
        let k = j + memchr3(b'>', b'\'', b'"', doc.get(j..)?)?;
        match doc[k] {
            b'>' => {
                return Some(Tag {
                    end,
                    kind: Kind::of(name),
                    name,
                    attrs: &doc[i..k],
                    attrs_start: i,
                    start,
                    after: k + 1,
                });
            }
            quote => {
                j = k + 1 + memchr(quote, doc.get(k + 1..)?)? + 1;
            }
        }
    }
}

/// Iterates over a tag's attributes: (name, value) with quotes removed.
fn attributes(attrs: &[u8]) -> impl Iterator<Item = (&[u8], &[u8], usize)> {
    let mut i = 0;
    std::iter::from_fn(move || {
        loop {
            while i < attrs.len() && (attrs[i].is_ascii_whitespace() || attrs[i] == b'/') {
                i += 1;
            }
            if i >= attrs.len() {
                return None;
            }
            let name_start = i;
            while i < attrs.len()
                && !attrs[i].is_ascii_whitespace()
                && !matches!(attrs[i], b'=' | b'/')
            {
                i += 1;
            }
            let name = &attrs[name_start..i];
            let mut j = i;
            while j < attrs.len() && attrs[j].is_ascii_whitespace() {
                j += 1;
            }
            if j >= attrs.len() || attrs[j] != b'=' {
                if name.is_empty() {
                    i += 1;
                    continue;
                }
                return Some((name, &attrs[i..i], i));
            }
            j += 1;
            while j < attrs.len() && attrs[j].is_ascii_whitespace() {
                j += 1;
            }
            let (value, value_start, next) = match attrs.get(j) {
                Some(&q @ (b'\'' | b'"')) => {
                    let close = memchr(q, &attrs[j + 1..]).map_or(attrs.len(), |k| j + 1 + k);
                    (&attrs[j + 1..close], j + 1, (close + 1).min(attrs.len()))
                }
                _ => {
                    let mut k = j;
                    while k < attrs.len() && !attrs[k].is_ascii_whitespace() {
                        k += 1;
                    }
                    (&attrs[j..k], j, k)
                }
            };
            i = next;
            return Some((name, value, value_start));
        }
    })
}

/// The value of attribute `name` (any case).
fn attr<'a>(attrs: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    attributes(attrs)
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v, _)| v)
}

/// The document range of attribute `class`'s value.
fn attr_range(attrs_start: usize, attrs: &[u8]) -> Option<(usize, usize)> {
    attributes(attrs)
        .find(|(n, _, _)| n.eq_ignore_ascii_case(b"class"))
        .map(|(_, v, at)| (attrs_start + at, attrs_start + at + v.len()))
}

/// Whether the `class` attribute lists `class` (any case, as Nagios' own pages mix them).
fn has_class(attrs: &[u8], class: &[u8]) -> bool {
    attr(attrs, b"class").is_some_and(|v| {
        v.split(|b| b.is_ascii_whitespace())
            .any(|c| c.eq_ignore_ascii_case(class))
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle.first()?;
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut from = 0;
    while let Some(i) = memchr::memchr2(lower, upper, haystack.get(from..)?) {
        let at = from + i;
        if haystack.len() - at >= needle.len()
            && haystack[at..at + needle.len()].eq_ignore_ascii_case(needle)
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

// ---------------------------------------------------------------------------------------
// Text.

/// Whether a fragment has no text but white space (tags and comments ignored; `&nbsp;`
/// counts as white space).
fn is_blank_text(fragment: &[u8]) -> bool {
    let mut pos = 0;
    while pos < fragment.len() {
        let (text_end, next) = match memchr(b'<', &fragment[pos..]) {
            None => (fragment.len(), fragment.len()),
            Some(i) => {
                let lt = pos + i;
                match markup_at(fragment, lt) {
                    Some(Markup::Tag(tag)) => (lt, tag.after),
                    Some(Markup::Skip(after)) => (lt, after),
                    Some(Markup::Text) => return false,
                    None => (lt, fragment.len()),
                }
            }
        };
        let mut text = &fragment[pos..text_end];
        while let Some((&b, rest)) = text.split_first() {
            if b.is_ascii_whitespace() {
                text = rest;
            } else if let Some(rest) = text.strip_prefix(b"&nbsp;") {
                text = rest;
            } else if let Some(rest) = text.strip_prefix(b"&#160;") {
                text = rest;
            } else if text.starts_with("\u{a0}".as_bytes()) {
                text = &text[2..];
            } else {
                return false;
            }
        }
        pos = next;
    }
    true
}

/// The text of a fragment, tags removed, entities decoded, trimmed.
fn cell_text(fragment: &[u8]) -> String {
    // Most cells are plain text: no markup, no references, valid UTF-8.
    if memchr::memchr2(b'<', b'&', fragment).is_none() {
        if let Ok(text) = std::str::from_utf8(fragment) {
            return text.trim().to_owned();
        }
    }
    let mut s = String::with_capacity(fragment.len());
    append_text(&mut s, fragment);
    let trimmed = s.trim();
    if trimmed.len() == s.len() {
        s
    } else {
        trimmed.to_owned()
    }
}

/// Appends the text of an HTML fragment: tags and comments removed (`<br>` → `\n`),
/// entities decoded.
fn append_text(out: &mut String, fragment: &[u8]) {
    let mut pos = 0;
    while pos < fragment.len() {
        let Some(i) = memchr(b'<', &fragment[pos..]) else {
            decode_entities(out, &fragment[pos..]);
            return;
        };
        let lt = pos + i;
        decode_entities(out, &fragment[pos..lt]);
        match markup_at(fragment, lt) {
            Some(Markup::Tag(tag)) => {
                if tag.is(Kind::Br) {
                    out.push('\n');
                }
                pos = tag.after;
            }
            Some(Markup::Skip(after)) => pos = after,
            Some(Markup::Text) => {
                out.push('<');
                pos = lt + 1;
            }
            // Unterminated markup at the end of the fragment: dropped.
            None => return,
        }
    }
}

/// Appends `raw` with character references decoded: `&name;` (the common named ones),
/// `&#NNN;` and `&#xHH;`, the `;` optional for numeric ones (status.cgi writes `&#94`).
/// Unknown references are kept as they are. Invalid UTF-8 becomes U+FFFD.
fn decode_entities(out: &mut String, raw: &[u8]) {
    let text = match std::str::from_utf8(raw) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(raw),
    };
    let text: &str = &text;
    let Some(first) = memchr(b'&', text.as_bytes()) else {
        out.push_str(text);
        return;
    };
    out.push_str(&text[..first]);
    let mut rest = &text[first..];
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        match decode_reference(rest) {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
}

/// Decodes the reference at the start of `s` (which starts with `&`): (char, bytes used).
fn decode_reference(s: &str) -> Option<(char, usize)> {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let (radix, digits_start) = match b.get(2) {
            Some(b'x' | b'X') => (16, 3),
            _ => (10, 2),
        };
        let mut end = digits_start;
        while end < b.len() && end - digits_start < 8 && (b[end] as char).is_digit(radix) {
            end += 1;
        }
        if end == digits_start {
            return None;
        }
        let code = u32::from_str_radix(&s[digits_start..end], radix).ok()?;
        let c = char::from_u32(code)
            .filter(|&c| c != '\0')
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        let len = if b.get(end) == Some(&b';') {
            end + 1
        } else {
            end
        };
        return Some((c, len));
    }
    let mut end = 1;
    while end < b.len() && end <= 10 && b[end].is_ascii_alphanumeric() {
        end += 1;
    }
    let name = &s[1..end];
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "hellip" => '\u{2026}',
        "copy" => '\u{a9}',
        "reg" => '\u{ae}',
        "trade" => '\u{2122}',
        "deg" => '\u{b0}',
        "micro" => '\u{b5}',
        "middot" => '\u{b7}',
        "times" => '\u{d7}',
        "plusmn" => '\u{b1}',
        "laquo" => '\u{ab}',
        "raquo" => '\u{bb}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "ldquo" => '\u{201c}',
        "rdquo" => '\u{201d}',
        "bull" => '\u{2022}',
        "euro" => '\u{20ac}',
        _ => return None,
    };
    if b.get(end) == Some(&b';') {
        Some((c, end + 1))
    } else if matches!(name, "amp" | "lt" | "gt" | "quot" | "nbsp") {
        // Legacy references that browsers accept without ';'.
        Some((c, end))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> String {
        cell_text(s.as_bytes())
    }

    #[test]
    fn decodes_entities_like_a_browser() {
        assert_eq!(text("high CPU load&nbsp;"), "high CPU load");
        assert_eq!(
            text("a &lt;b&gt; &amp;amp; &quot;q&quot; &#39;s&#39;"),
            "a <b> &amp; \"q\" 's'"
        );
        assert_eq!(text("x&#94y &#x41; &#233;t&eacute;"), "x^y A ét&eacute;");
        assert_eq!(text("a & b && c &; &#;"), "a & b && c &; &#;");
        assert_eq!(text("one<br>two<BR/>three"), "one\ntwo\nthree");
        assert_eq!(text("<b>bold</b> <!-- hidden --> 1 < 2"), "bold  1 < 2");
        assert_eq!(text("caf\u{e9}"), "caf\u{e9}");
    }

    #[test]
    fn finds_classes_and_attributes() {
        assert!(has_class(b" border=0 width=100% class='status'", b"status"));
        assert!(has_class(b" CLASS=\"a status b\"", b"status"));
        assert!(!has_class(b" class='statusTitle'", b"status"));
        assert_eq!(
            attr(b" type=password name=x", b"type"),
            Some(&b"password"[..])
        );
        assert_eq!(
            attr(b" disabled title='a > b'", b"title"),
            Some(&b"a > b"[..])
        );
    }

    #[test]
    fn tags_skip_quoted_gt() {
        let doc = b"<a title='x>y' href=\"q\">t</a>";
        let (tag, after) = next_tag_in(doc, 0).unwrap();
        assert!(tag.is(Kind::A));
        assert_eq!(&doc[after..after + 1], b"t");
    }

    #[test]
    fn host_classes() {
        assert_eq!(
            host_state_of_class(b"statusHOSTDOWN"),
            Some(AlarmState::Down)
        );
        assert_eq!(
            host_state_of_class(b"statusHOSTDOWNACK"),
            Some(AlarmState::Down)
        );
        assert_eq!(
            host_state_of_class(b"statusHOSTUNREACHABLESCHED"),
            Some(AlarmState::Unreachable)
        );
        assert_eq!(host_state_of_class(b"statusEven"), None);
    }

    #[test]
    fn last_updated_and_offset() {
        let page = b"<td>Last Updated: Wed Nov 25 09:33:53 UTC 2026<BR>";
        let local = last_updated(page).unwrap();
        assert_eq!(
            crate::model::CheckTime::UnixMillis(local * 1000).to_string(),
            "2026-11-25T09:33:53Z"
        );
        assert_eq!(utc_offset(local, local - 1), Some(0));
        assert_eq!(utc_offset(local + 7199, local), Some(7200));
        assert_eq!(utc_offset(local - 19_800, local + 2), Some(-19_800));
        assert_eq!(utc_offset(local + 20 * 3600, local), None);
        assert_eq!(last_updated(b"Last Updated: soon"), None);
    }

    #[test]
    fn totals() {
        assert_eq!(
            parse_totals("Results 1 - 11 of 11 Matching Services"),
            Some((1, 11, 11))
        );
        assert_eq!(
            parse_totals("Results 0 - 100 of 757 Matching Services"),
            Some((0, 100, 757))
        );
        assert_eq!(parse_totals("nothing"), None);
    }
}
