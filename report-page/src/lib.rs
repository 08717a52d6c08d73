//! device-sim's JSON report drawn as charts, in one place for its two users: central
//! serves the page at `/report` (with `/report.js`, the data from `/api/report`), and
//! device-sim writes it as one self-contained file (`--report-html`). Neither needs the
//! other for it.
//!
//! - [`REPORT_HTML`], [`REPORT_JS`]: the page and its script, as served.
//! - [`self_contained`]: the page with the script and a report inlined.

#![forbid(unsafe_code)]

/// The report page; it loads `/report.js`, which fetches `/api/report`.
pub const REPORT_HTML: &str = include_str!("report.html");
/// The page's script: draws the report it finds inlined or at `/api/report`.
pub const REPORT_JS: &str = include_str!("report.js");

/// The report page with `report_json` and the script inlined: one file that opens
/// without a server.
pub fn self_contained(report_json: &str) -> String {
    // `</` cannot end the script element early when written as `<\/`.
    let data = report_json.replace("</", "<\\/");
    REPORT_HTML.replace(
        "<script src=\"/report.js\"></script>",
        &format!(
            "<script id=\"report-data\" type=\"application/json\">{data}</script>\n<script>{REPORT_JS}</script>"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_contained_report_page_inlines_its_data_and_script() {
        let json = r#"{"scenario":{"seed":1},"strategies":{},"order":[],"note":"</script>"}"#;
        let html = self_contained(json);
        assert!(html.contains("id=\"report-data\""));
        assert!(
            !html.contains("src=\"/report.js\""),
            "the script is inlined"
        );
        assert!(html.contains("function draw(report)"));
        assert!(
            html.contains("<\\/script>"),
            "a </script> in the data cannot end the element"
        );
    }

    #[test]
    fn the_page_shows_promises_and_charger_faults() {
        for read in [
            "r.promise.checked",
            "r.promise.kept_share",
            "r.promise.broken",
            "p.error_s.p50, p.error_s.p95, p.error_s.max",
            "r.promise.revised",
            "r.faults",
            "\"chart-promise\"",
        ] {
            assert!(REPORT_JS.contains(read), "the script does not use {read}");
        }
        // Early promises (below 0) hang below the zero line instead of vanishing.
        assert!(REPORT_JS.contains("Math.min(0, ...values)"));
    }
}
