//! Invoice renderings: JSON (the API body), CSV (finance exports) and a printable HTML page.
//! All three are pure functions of the [`Invoice`], so equal invoices render to equal bytes.

use std::fmt::Write as _;

use crate::error::{BillingError, Result};
use crate::invoice::{Invoice, InvoiceLine, LineKind};
use crate::price::{BYTES_PER_GIB, format_micros, format_milli, round_half_up_div};
use crate::time::rfc3339;

/// Column order of [`Invoice::to_csv`].
pub const INVOICE_CSV_HEADER: &str = "org,month,status,kind,region,pool,application,\
price_effective_from,quantity,quantity_unit,unit_price,price_unit,amount,currency";

impl Invoice {
    /// Pretty-printed JSON with a trailing newline; field order is the struct's.
    pub fn to_json(&self) -> Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| BillingError::Encode {
            what: "invoice JSON",
            reason: e.to_string(),
        })?;
        text.push('\n');
        Ok(text)
    }

    /// One row per line, then one `total` row whose amount is the invoice total.
    pub fn to_csv(&self) -> String {
        let mut out = String::with_capacity(128 * (self.lines.len() + 2));
        out.push_str(INVOICE_CSV_HEADER);
        out.push('\n');
        let head = format!(
            "{},{},{}",
            csv_field(&self.org),
            self.month,
            self.status.as_str()
        );
        for line in &self.lines {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{head},{},{},{},{},{},{},{},{},{},{},{}",
                line.kind.as_str(),
                csv_field(&line.region),
                csv_field(&line.pool),
                csv_field(&line.application),
                rfc3339(line.price_effective_from),
                line.quantity,
                line.quantity_unit,
                format_micros(line.unit_price_micros),
                line.price_unit,
                line.amount,
                csv_field(&self.currency),
            );
        }
        let _ = writeln!(
            out,
            "{head},total,,,,,,,,,{},{}",
            self.total,
            csv_field(&self.currency)
        );
        out
    }

    /// A self-contained printable page (inline CSS, no scripts, nothing fetched).
    pub fn to_html(&self) -> String {
        let mut out = String::with_capacity(512 * (self.lines.len() + 4));
        let title = format!("Invoice {} — {}", html(&self.org), self.month);
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{title}</title>\n<style>\n\
             body{{font-family:sans-serif;margin:2em;color:#111}}\n\
             table{{border-collapse:collapse;width:100%;margin-bottom:1.5em}}\n\
             th,td{{border-bottom:1px solid #ccc;padding:4px 8px;text-align:left}}\n\
             td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums}}\n\
             @media print{{body{{margin:0}}}}\n</style>\n</head>\n<body>\n<h1>{title}</h1>\n\
             <p>Status: <strong>{status}</strong>. Period {start} to {end}; usage rated through {through}. \
             Amounts in {currency}; each line is rounded once, half up, to a millionth of a unit.</p>\n",
            status = self.status.as_str(),
            start = rfc3339(self.period_start),
            end = rfc3339(self.period_end),
            through = rfc3339(self.rated_through),
            currency = html(&self.currency),
        );
        for (kind, heading, quantity_heading) in [
            (LineKind::Compute, "Compute", "KPU-seconds"),
            (
                LineKind::SavepointStorage,
                "Savepoint storage",
                "GiB-months (display, 6 places)",
            ),
        ] {
            let lines: Vec<&InvoiceLine> = self.lines.iter().filter(|l| l.kind == kind).collect();
            if lines.is_empty() {
                continue;
            }
            let _ = write!(
                out,
                "<h2>{heading}</h2>\n<table>\n<tr><th>Region</th><th>Pool</th><th>Application</th>\
                 <th>Price from</th><th class=\"n\">{quantity_heading}</th><th class=\"n\">Unit price</th>\
                 <th class=\"n\">Amount</th></tr>\n"
            );
            for line in lines {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{} / {}</td><td class=\"n\">{}</td></tr>",
                    html(&line.region),
                    html(&line.pool),
                    html(&line.application),
                    rfc3339(line.price_effective_from),
                    self.display_quantity(line),
                    format_micros(line.unit_price_micros),
                    line.price_unit.replace('_', "-"),
                    line.amount,
                );
            }
            out.push_str("</table>\n");
        }
        for (heading, subtotals) in [
            ("By pool", &self.subtotals_by_pool),
            ("By region", &self.subtotals_by_region),
        ] {
            let _ = write!(
                out,
                "<h2>{heading}</h2>\n<table>\n<tr><th></th><th class=\"n\">Amount</th></tr>\n"
            );
            for subtotal in subtotals {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
                    html(&subtotal.key),
                    subtotal.amount
                );
            }
            out.push_str("</table>\n");
        }
        let _ = write!(
            out,
            "<p class=\"total\">Total: <strong>{} {}</strong></p>\n</body>\n</html>\n",
            self.total,
            html(&self.currency)
        );
        out
    }

    /// KPU-seconds are exact with three places; GiB-months are rounded for display only (the
    /// amount was computed from the exact byte-seconds).
    fn display_quantity(&self, line: &InvoiceLine) -> String {
        match line.kind {
            LineKind::Compute => format_milli(line.quantity),
            LineKind::SavepointStorage => {
                let unit = BYTES_PER_GIB * i128::from(self.month.seconds());
                let micro = round_half_up_div(line.quantity * 1_000_000, unit);
                format!("{}.{:06}", micro / 1_000_000, micro % 1_000_000)
            }
        }
    }
}

/// A CSV field (RFC 4180): quoted when it holds a comma, quote or line break.
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Text escaped for HTML element content and attribute values.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("app_a"), "app_a");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn html_escapes_markup() {
        assert_eq!(html("<b>&'\"</b>"), "&lt;b&gt;&amp;&#39;&quot;&lt;/b&gt;");
    }
}
