//! The embedded engine: a streaming content scanner in this process, and the ICAP headers
//! that report what any engine found.
//!
//! It needs nothing but `memchr` and `regex` (no `icap`, no I/O): the engine `dlp-server`
//! runs by default, with nothing installed.
//!
//! # Use
//!
//! ```text
//! let rules = Rules::parse(&std::fs::read_to_string(path)?)?;   // or Rules::default()
//! let mut scanner = Scanner::new(&rules);
//! for chunk in body { scanner.feed(chunk); }                      // pieces of any size
//! let findings = scanner.finish();                                // sorted by offset
//! let headers = icap_headers(&findings, "upload.bin", false);     // X-Violations-Found, ...
//! ```
//!
//! # Detectors
//!
//! - **Payment cards**: 13-19 digits passing the Luhn check, the digits possibly separated by
//!   single spaces or dashes. A candidate is a whole "number token" (digits joined by single
//!   separators), or inside a longer token a single digit run of 13-19 digits, or a standard
//!   layout (4-4-4-4, 4-4-4-4-3, 4-6-5, 4-6-4) bounded by a different separator. Tokens touching
//!   an ASCII letter (hex strings, identifiers) or a decimal point (`1234567890123.45`) are not
//!   cards; nor are numbers starting with 0 or of one repeated digit (`0000 0000 0000 0000` passes Luhn). The
//!   summary gives the brand (Visa, Mastercard, Amex, Discover, else "Card") and a masked form
//!   `4111********1111`: the full number never leaves the engine.
//! - **US SSNs**: `AAA-GG-SSSS` with dashes, not inside a longer dash-joined digit sequence nor
//!   touching a letter; invalid areas 000, 666, 900-999, group 00 and serial 0000 are rejected.
//!   Summary `SSN ***-**-6789`.
//! - **EICAR**: the 68-byte antivirus test string anywhere in the body.
//! - **Keywords** (ASCII case-insensitive, non-ASCII bytes exact) and **regexes** from the rules.
//!
//! # Rules file
//!
//! One rule per line; leading and trailing whitespace of a line and of a value is ignored;
//! blank lines and lines starting with `#` are comments.
//!
//! ```text
//! # keywords: ASCII case-insensitive, 1..=1024 bytes, inner spaces kept
//! keyword: project bluebird
//! # regexes: regex::bytes::Regex syntax; add (?i) for case-insensitivity, (?-u) for raw bytes
//! regex: ACME-[0-9]{6}
//! # switch a built-in detector off (all three are on by default): card, ssn or eicar
//! disable: eicar
//! ```
//!
//! A parse error names the 1-based line: `line 3: invalid regex: ...`. A regex that matches
//! the empty string is refused (it would match everywhere).
//!
//! # Bounds
//!
//! - Memory per scanner is fixed whatever the body size: the digit state machine keeps the last
//!   32 digits and 5 digit groups; the window detectors (EICAR, keywords, regexes) keep one
//!   buffer of at most [`MAX_BUFFER`] bytes (16 KiB block + 2 KiB overlap), and only when some
//!   window detector is on. At most [`MAX_FINDINGS`] findings are kept (the total is counted).
//! - Keyword, EICAR and regex matches are found across chunk and block boundaries as long as the
//!   match is at most [`MAX_MATCH_LEN`] (1 KiB) long. A regex match that would be longer may be
//!   missed or cut short; look-behind context (`\b`, `^`) also sees only 1 KiB back, and `$`
//!   means the end of the body.
//! - Matches of one rule do not overlap (leftmost-first, as `Regex::find_iter`), so every
//!   match is reported once, at its absolute byte offset.

use std::fmt;

use memchr::memmem;
use regex::bytes::{Regex, RegexBuilder};

/// Longest keyword, and longest regex match guaranteed to be found across block boundaries.
pub const MAX_MATCH_LEN: usize = 1024;
/// Bytes of new data scanned at once by the window detectors. Also the memory of a scanner,
/// held for as long as its body is read: a server keeps one per transaction, and 64 at once
/// held 4.2 MiB with 64 KiB blocks (1.1 MiB now). Each block rescans only the 1 KiB of
/// look-ahead of the one before (the detectors resume where they stopped), 6% at 16 KiB.
const BLOCK: usize = 16 * 1024;
/// Bytes kept from one block to the next: `MAX_MATCH_LEN` of look-ahead not yet reported plus
/// `MAX_MATCH_LEN` of look-behind context for `\b` and friends.
const TAIL: usize = 2 * MAX_MATCH_LEN;
/// Upper bound of the window buffer of a [`Scanner`], in bytes.
pub const MAX_BUFFER: usize = BLOCK + TAIL;
/// Findings kept by a [`Scanner`]; later ones are only counted (see [`Scanner::total_findings`]).
pub const MAX_FINDINGS: usize = 1000;
/// Findings listed in an `X-Violations-Found` value, so a body full of matches cannot produce
/// a header no proxy accepts.
pub const MAX_LISTED_VIOLATIONS: usize = 16;

/// The EICAR antivirus test string.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// What a [`Finding`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FindingKind {
    /// A payment card number.
    Card,
    /// A US social security number.
    Ssn,
    /// The EICAR test string.
    Eicar,
    /// A keyword of the rules (as written in the rules).
    Keyword(String),
    /// A regex of the rules (its pattern).
    Regex(String),
    /// A virus signature matched by an outside engine (clamd), by its name, e.g.
    /// `Win.Test.EICAR_HDB-1`.
    Virus(String),
    /// A data-leak heuristic of an outside engine, by its name, e.g. ClamAV's
    /// `Heuristics.Structured.CreditCardNumber`.
    Heuristic(String),
}

impl FindingKind {
    /// The threat name reported in ICAP headers (an outside engine's own name for what it
    /// found).
    pub fn threat_name(&self) -> &str {
        match self {
            FindingKind::Card => "DLP.PaymentCard",
            FindingKind::Ssn => "DLP.USSocialSecurityNumber",
            FindingKind::Eicar => "EICAR-Test-File",
            FindingKind::Keyword(_) => "DLP.Keyword",
            FindingKind::Regex(_) => "DLP.Regex",
            FindingKind::Virus(name) | FindingKind::Heuristic(name) => name,
        }
    }

    /// True for what an outside engine found (it names the threat, not where it is).
    pub fn from_engine(&self) -> bool {
        matches!(self, FindingKind::Virus(_) | FindingKind::Heuristic(_))
    }

    /// True for malware (reported in `X-Infection-Found`), false for data-leak findings.
    pub fn is_infection(&self) -> bool {
        matches!(self, FindingKind::Eicar | FindingKind::Virus(_))
    }

    /// Problem ID of the `X-Violations-Found` records: 0 malware, 1 card, 2 SSN, 3 keyword,
    /// 4 regex, 5 another heuristic of an outside engine.
    fn problem_id(&self) -> u32 {
        match self {
            FindingKind::Eicar | FindingKind::Virus(_) => 0,
            FindingKind::Card => 1,
            FindingKind::Ssn => 2,
            FindingKind::Keyword(_) => 3,
            FindingKind::Regex(_) => 4,
            FindingKind::Heuristic(name) if name.contains("CreditCard") => 1,
            FindingKind::Heuristic(name) if name.contains("SSN") => 2,
            FindingKind::Heuristic(_) => 5,
        }
    }
}

/// One match in a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was found.
    pub kind: FindingKind,
    /// Absolute byte offset of the start of the match in the body (0 for the findings of an
    /// outside engine, which does not say where: see [`FindingKind::from_engine`]).
    pub offset: u64,
    /// Human-readable description; sensitive data is masked.
    pub summary: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.from_engine() {
            return f.write_str(&self.summary);
        }
        write!(f, "{} at offset {}", self.summary, self.offset)
    }
}

/// An error reading a rules file.
#[derive(Debug)]
pub enum RulesError {
    /// The file could not be read.
    Io(std::io::Error),
    /// A line is not a valid rule.
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RulesError::Io(e) => write!(f, "cannot read the rules file: {e}"),
            RulesError::Parse { line, message } => write!(f, "line {line}: {message}"),
        }
    }
}

impl std::error::Error for RulesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RulesError::Io(e) => Some(e),
            RulesError::Parse { .. } => None,
        }
    }
}

/// What to look for. Build once (parsing compiles the regexes), share among scanners.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Payment card numbers.
    pub cards: bool,
    /// US social security numbers.
    pub ssn: bool,
    /// The EICAR test string.
    pub eicar: bool,
    keywords: Vec<String>,
    /// All keywords in one case-insensitive alternation, so adding keywords costs one pass,
    /// not one pass per keyword.
    keyword_re: Option<Regex>,
    regexes: Vec<Regex>,
}

impl Default for Rules {
    /// Cards, SSNs and EICAR on; no keywords or regexes.
    fn default() -> Self {
        Rules {
            cards: true,
            ssn: true,
            eicar: true,
            keywords: Vec::new(),
            keyword_re: None,
            regexes: Vec::new(),
        }
    }
}

impl Rules {
    /// Parses a rules file (see the module documentation), starting from [`Rules::default`].
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let mut rules = Rules::default();
        let mut keywords = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| RulesError::Parse {
                line: i + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((kind, value)) = line.split_once(':') else {
                return Err(err(format!(
                    "expected `keyword: TEXT`, `regex: PATTERN` or `disable: NAME`, got {line:?}"
                )));
            };
            let value = value.trim();
            match kind.trim() {
                "keyword" => {
                    check_keyword(value).map_err(err)?;
                    keywords.push(value.to_string());
                }
                "regex" => rules.regexes.push(compile_regex(value).map_err(err)?),
                "disable" => match value {
                    "card" | "cards" => rules.cards = false,
                    "ssn" => rules.ssn = false,
                    "eicar" => rules.eicar = false,
                    _ => {
                        return Err(err(format!(
                            "unknown detector {value:?} (expected card, ssn or eicar)"
                        )))
                    }
                },
                other => {
                    return Err(err(format!(
                        "unknown rule kind {other:?} (expected keyword, regex or disable)"
                    )))
                }
            }
        }
        rules.set_keywords(keywords);
        Ok(rules)
    }

    /// Reads and parses a rules file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(RulesError::Io)?;
        Rules::parse(&text)
    }

    /// Adds a keyword (ASCII case-insensitive, 1..=[`MAX_MATCH_LEN`] bytes).
    pub fn add_keyword(&mut self, keyword: &str) -> Result<(), String> {
        check_keyword(keyword)?;
        let mut all = std::mem::take(&mut self.keywords);
        all.push(keyword.to_string());
        self.set_keywords(all);
        Ok(())
    }

    /// Adds a regex (`regex::bytes::Regex` syntax).
    pub fn add_regex(&mut self, pattern: &str) -> Result<(), String> {
        self.regexes.push(compile_regex(pattern)?);
        Ok(())
    }

    /// The keywords, as written.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// The regex patterns, as written.
    pub fn regexes(&self) -> impl Iterator<Item = &str> {
        self.regexes.iter().map(Regex::as_str)
    }

    fn set_keywords(&mut self, mut keywords: Vec<String>) {
        // Case-insensitive duplicates would never be reported under their second spelling.
        let mut seen: Vec<String> = Vec::new();
        keywords.retain(|k| {
            let lower = k.to_ascii_lowercase();
            let new = !seen.contains(&lower);
            seen.push(lower);
            new
        });
        self.keyword_re = if keywords.is_empty() {
            None
        } else {
            // Longest first: the alternation is leftmost-first, so at one start offset the
            // longer keyword wins ("top secret" over "top").
            let mut sorted: Vec<&String> = keywords.iter().collect();
            sorted.sort_by_key(|k| std::cmp::Reverse(k.len()));
            let alternatives: Vec<String> = sorted.iter().map(|k| escape_bytes(k)).collect();
            let pattern = format!("(?i-u)(?:{})", alternatives.join("|"));
            Some(Regex::new(&pattern).expect("escaped keywords always compile"))
        };
        self.keywords = keywords;
    }

    /// Whether a detector needs the overlap window (everything but the digit detectors).
    fn needs_window(&self) -> bool {
        self.eicar || self.keyword_re.is_some() || !self.regexes.is_empty()
    }
}

fn check_keyword(k: &str) -> Result<(), String> {
    if k.is_empty() {
        Err("empty keyword".into())
    } else if k.len() > MAX_MATCH_LEN {
        Err(format!(
            "keyword of {} bytes is longer than {MAX_MATCH_LEN}",
            k.len()
        ))
    } else {
        Ok(())
    }
}

fn compile_regex(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("empty regex".into());
    }
    let re = RegexBuilder::new(pattern)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))?;
    if re.is_match(b"") {
        return Err(format!("regex {pattern:?} matches the empty string"));
    }
    Ok(re)
}

/// Escapes a keyword for a `(?-u)` pattern: ASCII through `regex::escape`, other bytes as
/// `\xHH` so they match those exact bytes.
fn escape_bytes(k: &str) -> String {
    let mut out = String::new();
    for &b in k.as_bytes() {
        if b.is_ascii() {
            out.push_str(&regex::escape(&(b as char).to_string()));
        } else {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    out
}

/// Findings collected so far, capped at [`MAX_FINDINGS`].
#[derive(Debug, Default)]
struct Sink {
    findings: Vec<Finding>,
    total: u64,
}

impl Sink {
    fn push(&mut self, f: Finding) {
        self.total += 1;
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(f);
        }
    }
}

/// A streaming scanner over one body. Feed the body in pieces of any size, then
/// [`finish`](Scanner::finish).
#[derive(Debug)]
pub struct Scanner<'r> {
    rules: &'r Rules,
    digits: Option<Digits>,
    window: Option<Window>,
    sink: Sink,
    consumed: u64,
}

impl<'r> Scanner<'r> {
    /// A scanner for one body. Cheap: the regexes are compiled in [`Rules`].
    pub fn new(rules: &'r Rules) -> Self {
        let digits = (rules.cards || rules.ssn).then(|| Digits::new(rules.cards, rules.ssn));
        let window = rules.needs_window().then(|| Window::new(rules));
        Scanner {
            rules,
            digits,
            window,
            sink: Sink::default(),
            consumed: 0,
        }
    }

    /// Scans the next piece of the body.
    pub fn feed(&mut self, data: &[u8]) {
        if let Some(d) = &mut self.digits {
            d.feed(data, self.consumed, &mut self.sink);
        }
        if let Some(w) = &mut self.window {
            w.feed(data, self.rules, &mut self.sink);
        }
        self.consumed += data.len() as u64;
    }

    /// Findings so far (in detection order, not necessarily by offset). A match still inside
    /// the look-ahead (the last 1 KiB, or an unfinished digit token) appears after more data or
    /// [`finish`](Scanner::finish).
    pub fn findings(&self) -> &[Finding] {
        &self.sink.findings
    }

    /// Number of findings, including those beyond [`MAX_FINDINGS`] that were not kept.
    pub fn total_findings(&self) -> u64 {
        self.sink.total
    }

    /// Bytes fed so far.
    pub fn bytes_scanned(&self) -> u64 {
        self.consumed
    }

    /// Ends the body: reports matches at its very end and returns the findings sorted by
    /// offset (at most [`MAX_FINDINGS`]).
    pub fn finish(self) -> Vec<Finding> {
        self.finish_with_total().0
    }

    /// Like [`finish`](Scanner::finish), also returning [`total_findings`](Scanner::total_findings).
    pub fn finish_with_total(mut self) -> (Vec<Finding>, u64) {
        self.flush();
        let mut findings = self.sink.findings;
        findings.sort_by_key(|f| (f.offset, f.kind.problem_id()));
        (findings, self.sink.total)
    }

    fn flush(&mut self) {
        if let Some(d) = &mut self.digits {
            d.finish(&mut self.sink);
        }
        if let Some(w) = &mut self.window {
            w.scan(self.rules, &mut self.sink, true);
        }
    }
}

/// Scans a whole body at once.
pub fn scan(rules: &Rules, body: &[u8]) -> Vec<Finding> {
    let mut s = Scanner::new(rules);
    s.feed(body);
    s.finish()
}

// ---------------------------------------------------------------------------------------------
// Window detectors: EICAR, keywords, regexes.

/// The window detectors, each with the absolute offset from which it still has to report.
#[derive(Debug, Clone, Copy)]
enum Matcher {
    Eicar,
    Keywords,
    Regex(usize),
}

/// Holds at most [`MAX_BUFFER`] bytes: a block of new data after the kept tail. Matches are
/// reported only when they start at least `MAX_MATCH_LEN` bytes before the end of the buffer
/// (or at the end of the body), so any match up to that length is seen whole, with its left
/// context, exactly once: each matcher keeps a cursor (`next`) and never reports before it.
#[derive(Debug)]
struct Window {
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]`.
    base: u64,
    matchers: Vec<(Matcher, u64)>,
    eicar: memmem::Finder<'static>,
}

impl Window {
    fn new(rules: &Rules) -> Self {
        let mut matchers = Vec::new();
        if rules.eicar {
            matchers.push((Matcher::Eicar, 0));
        }
        if rules.keyword_re.is_some() {
            matchers.push((Matcher::Keywords, 0));
        }
        for i in 0..rules.regexes.len() {
            matchers.push((Matcher::Regex(i), 0));
        }
        Window {
            // Allocated once at the bound: the buffer never grows past it.
            buf: Vec::with_capacity(MAX_BUFFER),
            base: 0,
            matchers,
            eicar: memmem::Finder::new(EICAR),
        }
    }

    fn feed(&mut self, mut data: &[u8], rules: &Rules, sink: &mut Sink) {
        while !data.is_empty() {
            let n = (MAX_BUFFER - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == MAX_BUFFER {
                self.scan(rules, sink, false);
                let drop = self.buf.len() - TAIL;
                self.buf.drain(..drop);
                self.base += drop as u64;
            }
        }
    }

    /// Reports the matches starting before `end - MAX_MATCH_LEN` (before `end` when `last`).
    fn scan(&mut self, rules: &Rules, sink: &mut Sink, last: bool) {
        let end = self.buf.len();
        let limit = if last {
            end
        } else {
            end.saturating_sub(MAX_MATCH_LEN)
        };
        let buf = &self.buf[..];
        for (matcher, next) in &mut self.matchers {
            // Always >= base: the tail kept is longer than the look-ahead.
            let mut pos = (*next - self.base) as usize;
            while pos <= end {
                let found = match *matcher {
                    Matcher::Eicar => self
                        .eicar
                        .find(&buf[pos..])
                        .map(|p| (pos + p, pos + p + EICAR.len())),
                    Matcher::Keywords => rules
                        .keyword_re
                        .as_ref()
                        .and_then(|re| re.find_at(buf, pos))
                        .map(|m| (m.start(), m.end())),
                    Matcher::Regex(i) => rules.regexes[i]
                        .find_at(buf, pos)
                        .map(|m| (m.start(), m.end())),
                };
                let Some((start, stop)) = found else { break };
                if start >= limit {
                    break;
                }
                if stop > start {
                    let offset = self.base + start as u64;
                    sink.push(describe(*matcher, rules, &buf[start..stop], offset));
                    pos = stop;
                } else {
                    // Empty-matching regexes are refused at parse time; step anyway.
                    pos = stop + 1;
                }
            }
            *next = (self.base + pos as u64).max(self.base + limit as u64);
        }
    }
}

fn describe(matcher: Matcher, rules: &Rules, matched: &[u8], offset: u64) -> Finding {
    let (kind, summary) = match matcher {
        Matcher::Eicar => (FindingKind::Eicar, "EICAR test string".to_string()),
        Matcher::Keywords => {
            let k = rules
                .keywords
                .iter()
                .find(|k| k.as_bytes().eq_ignore_ascii_case(matched))
                .cloned()
                .unwrap_or_else(|| String::from_utf8_lossy(matched).into_owned());
            let summary = format!("keyword {k:?}");
            (FindingKind::Keyword(k), summary)
        }
        Matcher::Regex(i) => {
            let p = rules.regexes[i].as_str().to_string();
            // The matched text may itself be the secret: report only its length.
            let summary = format!("regex /{p}/ ({} bytes)", matched.len());
            (FindingKind::Regex(p), summary)
        }
    };
    Finding {
        kind,
        offset,
        summary,
    }
}

// ---------------------------------------------------------------------------------------------
// Digit detectors: cards and SSNs, one state machine over every byte.

/// Edge marker in [`Group::before`]/[`Group::after`]: an ASCII letter touches the token.
const LETTER: u8 = b'A';
/// Card layouts recognised inside a longer token (group lengths).
const LAYOUTS: [&[u64]; 4] = [&[4, 4, 4, 4], &[4, 4, 4, 4, 3], &[4, 6, 5], &[4, 6, 4]];
/// Digits remembered per token: the longest candidate is 19 digits.
const RING: usize = 32;

/// A maximal run of digits inside a token.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    len: u64,
    start: u64,
    /// What precedes the group: 0 (token start), b' ', b'-', b'.' or [`LETTER`].
    before: u8,
    /// What follows it, same encoding, known when the group is finalized.
    after: u8,
}

/// State machine over "number tokens": digits joined by single spaces, dashes or dots. Keeps
/// only the last [`RING`] digits and last 5 groups, so its memory is fixed.
#[derive(Debug)]
struct Digits {
    cards: bool,
    ssn: bool,
    in_token: bool,
    /// A separator just seen after a digit, waiting for the next byte (0 = none).
    sep: u8,
    cur: Group,
    groups: [Group; 5],
    ngroups: usize,
    ring: [u8; RING],
    token_digits: u64,
    token_start: u64,
    /// Touches a letter or holds a decimal point: the whole token is not a card.
    token_tainted: bool,
    /// Card candidates inside the current token, held back while the whole token (at most 19
    /// digits so far) may still be one card that contains them.
    pending: Vec<Finding>,
    /// Last byte of the previous piece, for the letter-before check.
    last_byte: u8,
}

#[inline]
fn is_digit(b: u8) -> bool {
    b.wrapping_sub(b'0') < 10
}

/// Index of the first ASCII digit. Tests 32 bytes at a time with a branch-free loop the
/// compiler vectorises: text is mostly non-digits, and this is the hot loop of a clean body.
#[inline]
fn find_digit(hay: &[u8]) -> Option<usize> {
    let mut chunks = hay.chunks_exact(32);
    let mut base = 0;
    for chunk in &mut chunks {
        let chunk: &[u8; 32] = chunk.try_into().expect("chunks_exact(32)");
        let mut any = false;
        for &b in chunk {
            any |= is_digit(b);
        }
        if any {
            return chunk.iter().position(|&b| is_digit(b)).map(|p| base + p);
        }
        base += 32;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| is_digit(b))
        .map(|p| base + p)
}

impl Digits {
    fn new(cards: bool, ssn: bool) -> Self {
        Digits {
            cards,
            ssn,
            in_token: false,
            sep: 0,
            cur: Group::default(),
            groups: [Group::default(); 5],
            ngroups: 0,
            ring: [0; RING],
            token_digits: 0,
            token_start: 0,
            token_tainted: false,
            pending: Vec::new(),
            last_byte: 0,
        }
    }

    /// `base` is the absolute offset of `data[0]`.
    fn feed(&mut self, data: &[u8], base: u64, sink: &mut Sink) {
        let mut i = 0;
        while i < data.len() {
            if !self.in_token {
                match find_digit(&data[i..]) {
                    Some(p) => i += p,
                    None => break,
                }
                let prev = if i > 0 { data[i - 1] } else { self.last_byte };
                self.start_token(base + i as u64, prev.is_ascii_alphabetic());
            }
            while i < data.len() {
                let b = data[i];
                i += 1;
                if is_digit(b) {
                    if self.sep != 0 {
                        self.next_group(base + i as u64 - 1, sink);
                    }
                    self.push_digit(b - b'0', sink);
                } else if self.sep == 0 && matches!(b, b' ' | b'-' | b'.') {
                    self.sep = b;
                } else {
                    let letter_after = self.sep == 0 && b.is_ascii_alphabetic();
                    self.end_token(letter_after, sink);
                    break;
                }
            }
        }
        if let Some(&b) = data.last() {
            self.last_byte = b;
        }
    }

    fn finish(&mut self, sink: &mut Sink) {
        if self.in_token {
            self.end_token(false, sink);
        }
    }

    fn start_token(&mut self, offset: u64, letter_before: bool) {
        self.in_token = true;
        self.sep = 0;
        self.ngroups = 0;
        self.token_digits = 0;
        self.token_start = offset;
        self.token_tainted = letter_before;
        self.cur = Group {
            len: 0,
            start: offset,
            before: if letter_before { LETTER } else { 0 },
            after: 0,
        };
    }

    fn push_digit(&mut self, d: u8, sink: &mut Sink) {
        self.ring[(self.token_digits % RING as u64) as usize] = d;
        self.token_digits += 1;
        self.cur.len += 1;
        if self.token_digits == 20 {
            // The whole token can no longer be a card: its inner candidates stand.
            for f in self.pending.drain(..) {
                sink.push(f);
            }
        }
    }

    fn next_group(&mut self, offset: u64, sink: &mut Sink) {
        let sep = std::mem::take(&mut self.sep);
        self.finalize_group(sep, sink);
        if sep == b'.' {
            self.token_tainted = true;
        }
        self.cur = Group {
            len: 0,
            start: offset,
            before: sep,
            after: 0,
        };
    }

    fn end_token(&mut self, letter_after: bool, sink: &mut Sink) {
        self.finalize_group(if letter_after { LETTER } else { 0 }, sink);
        self.token_tainted |= letter_after;
        let n = self.token_digits;
        let whole = if self.cards && !self.token_tainted && (13..=19).contains(&n) {
            self.card(n as usize, self.token_start)
        } else {
            None
        };
        match whole {
            Some(f) => {
                // The inner candidates are parts of this card.
                self.pending.clear();
                sink.push(f);
            }
            None => {
                for f in self.pending.drain(..) {
                    sink.push(f);
                }
            }
        }
        self.in_token = false;
        self.sep = 0;
    }

    /// The last `n` digits of the token (`n` <= 19).
    fn last_digits(&self, n: usize) -> ([u8; 19], usize) {
        let mut out = [0u8; 19];
        let first = self.token_digits - n as u64;
        for (k, slot) in out.iter_mut().enumerate().take(n) {
            *slot = self.ring[((first + k as u64) % RING as u64) as usize];
        }
        (out, n)
    }

    fn finalize_group(&mut self, after: u8, sink: &mut Sink) {
        let mut g = self.cur;
        g.after = after;
        if self.ngroups == self.groups.len() {
            self.groups.copy_within(1.., 0);
            self.ngroups -= 1;
        }
        self.groups[self.ngroups] = g;
        self.ngroups += 1;

        if self.cards {
            let clean = |e: u8| e != b'.' && e != LETTER;
            if (13..=19).contains(&g.len) && clean(g.before) && clean(g.after) {
                self.candidate(g.len as usize, g.start, sink);
            }
            for layout in LAYOUTS {
                let k = layout.len();
                if self.ngroups < k {
                    continue;
                }
                let gs = &self.groups[self.ngroups - k..self.ngroups];
                let s = gs[1].before;
                let fits = gs.iter().zip(layout).all(|(g, &l)| g.len == l)
                    && (s == b' ' || s == b'-')
                    && gs[1..].iter().all(|g| g.before == s)
                    && clean(gs[0].before)
                    && gs[0].before != s
                    && clean(gs[k - 1].after)
                    && gs[k - 1].after != s;
                if fits {
                    let n = layout.iter().sum::<u64>() as usize;
                    self.candidate(n, gs[0].start, sink);
                }
            }
        }
        if self.ssn && self.ngroups >= 3 {
            let gs = &self.groups[self.ngroups - 3..self.ngroups];
            let edge = |e: u8| e == 0 || e == b' ';
            if gs[0].len == 3
                && gs[1].len == 2
                && gs[2].len == 4
                && gs[1].before == b'-'
                && gs[2].before == b'-'
                && edge(gs[0].before)
                && edge(gs[2].after)
            {
                let (d, _) = self.last_digits(9);
                if let Some(summary) = ssn_summary(&d[..9]) {
                    sink.push(Finding {
                        kind: FindingKind::Ssn,
                        offset: gs[0].start,
                        summary,
                    });
                }
            }
        }
    }

    /// A card candidate inside the token: held back while the whole token may be the card.
    fn candidate(&mut self, n: usize, start: u64, sink: &mut Sink) {
        if let Some(f) = self.card(n, start) {
            if self.token_digits > 19 {
                sink.push(f);
            } else {
                self.pending.push(f);
            }
        }
    }

    fn card(&self, n: usize, start: u64) -> Option<Finding> {
        let (d, n) = self.last_digits(n);
        let d = &d[..n];
        // No issuer number starts with 0; zero-padded IDs do.
        if d[0] == 0 || !luhn(d) || d.iter().all(|&x| x == d[0]) {
            return None;
        }
        Some(Finding {
            kind: FindingKind::Card,
            offset: start,
            summary: format!("{} {}", card_brand(d), mask_card(d)),
        })
    }
}

/// The Luhn check over digit values (not ASCII).
fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum % 10 == 0
}

/// Brand from the leading digits and the length (the common IIN ranges only).
fn card_brand(d: &[u8]) -> &'static str {
    let num = |k: usize| d[..k].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let n = d.len();
    let (p2, p3, p4) = (num(2), num(3), num(4));
    if d[0] == 4 && matches!(n, 13 | 16 | 19) {
        "Visa"
    } else if n == 16 && ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) {
        "Mastercard"
    } else if n == 15 && (p2 == 34 || p2 == 37) {
        "Amex"
    } else if n >= 16 && (p4 == 6011 || p2 == 65 || (644..=649).contains(&p3)) {
        "Discover"
    } else {
        "Card"
    }
}

/// First 4 and last 4 digits, the rest as `*`.
fn mask_card(d: &[u8]) -> String {
    let n = d.len();
    d.iter()
        .enumerate()
        .map(|(i, &x)| {
            if i < 4 || i >= n - 4 {
                char::from(b'0' + x)
            } else {
                '*'
            }
        })
        .collect()
}

/// `Some("SSN ***-**-6789")` when the 9 digits are a valid SSN.
fn ssn_summary(d: &[u8]) -> Option<String> {
    let num = |r: std::ops::Range<usize>| d[r].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return None;
    }
    Some(format!("SSN ***-**-{serial:04}"))
}

// ---------------------------------------------------------------------------------------------
// ICAP headers.

/// Replaces control bytes so a value is safe in a header line.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `X-Infection-Found` value for the first malware finding (EICAR, or a virus an outside
/// engine named), as c-icap's virus_scan sends it: `Type=0; Resolution=2;
/// Threat=EICAR-Test-File;`.
pub fn infection_header(findings: &[Finding]) -> Option<String> {
    let f = findings.iter().find(|f| f.kind.is_infection())?;
    Some(format!(
        "Type=0; Resolution=2; Threat={};",
        header_safe(f.kind.threat_name()).replace(';', "?")
    ))
}

/// `X-Violations-Found` value: the count, then per finding four lines (file name, threat and
/// masked summary, problem ID, resolution 2 = blocked), listing at most
/// [`MAX_LISTED_VIOLATIONS`] findings (the count is the number listed, as parsers expect).
///
/// With `fold`, lines are joined with CRLF + TAB (obs-fold) exactly as c-icap sends them; a
/// writer that refuses control bytes in values needs `fold = false`, which joins them with a
/// space: the value a receiver sees after unfolding.
pub fn violations_header(findings: &[Finding], filename: &str, fold: bool) -> Option<String> {
    if findings.is_empty() {
        return None;
    }
    let listed = &findings[..findings.len().min(MAX_LISTED_VIOLATIONS)];
    let sep = if fold { "\r\n\t" } else { " " };
    let filename = header_safe(filename);
    let mut out = listed.len().to_string();
    for f in listed {
        let mut threat = format!(
            "{} {}",
            header_safe(f.kind.threat_name()),
            header_safe(&f.summary)
        );
        if !f.kind.from_engine() {
            threat.push_str(&format!(" @{}", f.offset));
        }
        for line in [
            filename.as_str(),
            threat.as_str(),
            &f.kind.problem_id().to_string(),
            "2",
        ] {
            out.push_str(sep);
            out.push_str(line);
        }
    }
    Some(out)
}

/// The ICAP response headers for a blocked body: `X-Violations-Found` when anything was found
/// and `X-Infection-Found` for malware. Empty for a clean body.
pub fn icap_headers(
    findings: &[Finding],
    filename: &str,
    fold: bool,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(v) = infection_header(findings) {
        out.push(("X-Infection-Found", v));
    }
    if let Some(v) = violations_header(findings, filename, fold) {
        out.push(("X-Violations-Found", v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(f: &[Finding]) -> Vec<(FindingKind, u64)> {
        f.iter().map(|f| (f.kind.clone(), f.offset)).collect()
    }

    fn scan_default(body: &[u8]) -> Vec<Finding> {
        scan(&Rules::default(), body)
    }

    fn cards_in(body: &str) -> Vec<String> {
        scan_default(body.as_bytes())
            .into_iter()
            .filter(|f| f.kind == FindingKind::Card)
            .map(|f| f.summary)
            .collect()
    }

    fn ssns_in(body: &str) -> usize {
        scan_default(body.as_bytes())
            .iter()
            .filter(|f| f.kind == FindingKind::Ssn)
            .count()
    }

    /// Deterministic xorshift, so the large tests need no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn luhn_reference_values() {
        let d = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>();
        assert!(luhn(&d("4111111111111111")));
        assert!(luhn(&d("79927398713")));
        assert!(!luhn(&d("4111111111111112")));
        assert!(!luhn(&d("79927398710")));
    }

    #[test]
    fn cards_found_with_brand_and_mask() {
        assert_eq!(
            cards_in("card 4111111111111111 ok"),
            ["Visa 4111********1111"]
        );
        assert_eq!(cards_in("4111 1111 1111 1111"), ["Visa 4111********1111"]);
        assert_eq!(
            cards_in("x 5500-0000-0000-0004."),
            ["Mastercard 5500********0004"]
        );
        assert_eq!(cards_in("amex 3782 822463 10005"), ["Amex 3782*******0005"]);
        assert_eq!(cards_in("6011000990139424"), ["Discover 6011********9424"]);
        assert_eq!(cards_in("4222222222222"), ["Visa 4222*****2222"]);
        // 2-series Mastercard, mixed separators.
        assert_eq!(
            cards_in("2223-0000 4841-0010"),
            ["Mastercard 2223********0010"]
        );
        let f = scan_default(b"abc: 4111111111111111");
        assert_eq!(f[0].offset, 5);
        // The full number never appears in any output.
        assert!(!format!("{f:?}").contains("4111111111111111"));
    }

    #[test]
    fn cards_rejected() {
        assert!(cards_in("4111111111111112").is_empty(), "Luhn fails");
        assert!(cards_in("411111111111").is_empty(), "12 digits");
        // 20 digits (Luhn-valid as a whole and with a valid 16-digit prefix/suffix).
        assert!(cards_in("41111111111111110000").is_empty(), "20 digits");
        assert!(
            cards_in("14111111111111111").is_empty(),
            "inside a longer run"
        );
        assert!(cards_in("04111111111111111").is_empty(), "leading 0");
        assert!(
            cards_in("0000 0000 0000 0000").is_empty(),
            "one repeated digit"
        );
        assert!(
            cards_in("4111  1111 1111 1111").is_empty(),
            "double space splits it"
        );
        assert!(cards_in("4111--1111-1111-1111").is_empty());
        assert!(cards_in("deadbeef4111111111111111").is_empty(), "hex");
        assert!(cards_in("4111111111111111cafe").is_empty(), "hex");
        assert!(cards_in("1234567890123.45").is_empty() || luhn_fails("1234567890123"));
        assert!(cards_in("4111111111111111.25").is_empty(), "decimal");
        assert!(cards_in("0.4111111111111111").is_empty(), "decimal");
        assert!(
            cards_in("4111.1111.1111.1111").is_empty(),
            "dots are not separators"
        );
    }

    fn luhn_fails(s: &str) -> bool {
        !luhn(&s.bytes().map(|b| b - b'0').collect::<Vec<_>>())
    }

    #[test]
    fn cards_inside_longer_tokens() {
        // Two contiguous cards separated by one space: each run of 16 counts.
        assert_eq!(
            cards_in("4111111111111111 5500000000000004"),
            ["Visa 4111********1111", "Mastercard 5500********0004"]
        );
        // A 4-4-4-4 layout after a short number joined by a dash.
        assert_eq!(cards_in("7-4111 1111 1111 1111"), ["Visa 4111********1111"]);
        // A layout continued by the same separator is part of something longer.
        assert!(cards_in("4111 1111 1111 1111 1234").is_empty());
        // Terminating punctuation and separators.
        assert_eq!(cards_in("(4111-1111-1111-1111)"), ["Visa 4111********1111"]);
        assert_eq!(cards_in("4111111111111111-"), ["Visa 4111********1111"]);
        assert_eq!(
            cards_in("\"4111111111111111\",\"5500000000000004\"").len(),
            2
        );
    }

    #[test]
    fn ssn_found_and_rejected() {
        let f = scan_default(b"ssn: 123-45-6789\n");
        assert_eq!(kinds(&f), [(FindingKind::Ssn, 5)]);
        assert_eq!(f[0].summary, "SSN ***-**-6789");
        assert_eq!(ssns_in("123-45-6789 and 5 kids"), 1);
        assert_eq!(ssns_in("899-01-0001"), 1);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "999-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "123 45 6789",
            "1123-45-6789",
            "123-45-67890",
            "9-123-45-6789",
            "123-45-6789-1",
            "x123-45-6789",
            "123-45-6789z",
            "123-456-789",
        ] {
            assert_eq!(ssns_in(bad), 0, "{bad}");
        }
    }

    #[test]
    fn eicar_found_and_headers() {
        let mut body = b"prefix ".to_vec();
        body.extend_from_slice(EICAR);
        let f = scan_default(&body);
        assert_eq!(kinds(&f), [(FindingKind::Eicar, 7)]);
        assert!(scan_default(&EICAR[1..]).is_empty());
        assert_eq!(
            infection_header(&f).unwrap(),
            "Type=0; Resolution=2; Threat=EICAR-Test-File;"
        );
        let h = icap_headers(&f, "a\r\nb.com", true);
        assert_eq!(h[0].0, "X-Infection-Found");
        assert_eq!(
            h[1].1,
            "1\r\n\ta??b.com\r\n\tEICAR-Test-File EICAR test string @7\r\n\t0\r\n\t2"
        );
        let flat = violations_header(&f, "f", false).unwrap();
        assert!(!flat.bytes().any(|b| b < 0x20));
        assert!(icap_headers(&[], "f", true).is_empty());
    }

    #[test]
    fn violations_header_lists_a_bounded_number() {
        let body = "4111111111111111\n".repeat(100);
        let f = scan_default(body.as_bytes());
        assert_eq!(f.len(), 100);
        let v = violations_header(&f, "f", true).unwrap();
        assert!(
            v.starts_with("16\r\n\tf\r\n\tDLP.PaymentCard Visa 4111********1111 @0\r\n\t1\r\n\t2")
        );
        assert_eq!(v.matches("\r\n\t").count(), 16 * 4);
    }

    #[test]
    fn keywords_case_insensitive_and_regexes() {
        let rules = Rules::parse(
            "# comment\n\n  keyword:  Project Bluebird \nkeyword: top\nkeyword: top secret\n\
             regex: ACME-[0-9]{6}\nkeyword: caf\u{e9}\ndisable: ssn\n",
        )
        .unwrap();
        assert!(!rules.ssn && rules.cards && rules.eicar);
        assert_eq!(
            rules.keywords(),
            ["Project Bluebird", "top", "top secret", "caf\u{e9}"]
        );
        let f = scan(
            &rules,
            "the PROJECT bluebird is TOP SECRET; id acme-123456 ACME-123456 CAF\u{c9} caf\u{e9} 123-45-6789"
                .as_bytes(),
        );
        let got: Vec<_> = f.iter().map(|f| (f.kind.clone(), f.offset)).collect();
        assert_eq!(
            got,
            [
                (FindingKind::Keyword("Project Bluebird".into()), 4),
                (FindingKind::Keyword("top secret".into()), 24),
                (FindingKind::Regex("ACME-[0-9]{6}".into()), 51),
                // "CAFÉ": É is not ASCII, so no case folding for it.
                (FindingKind::Keyword("caf\u{e9}".into()), 69),
            ]
        );
        assert_eq!(f[2].summary, "regex /ACME-[0-9]{6}/ (11 bytes)");
    }

    #[test]
    fn rules_errors_name_the_line() {
        let err = |t: &str| Rules::parse(t).unwrap_err().to_string();
        assert!(err("keyword: a\n\nregex: (\n").starts_with("line 3: invalid regex"));
        assert!(err("# x\nfoo: bar").starts_with("line 2: unknown rule kind \"foo\""));
        assert!(err("just text").starts_with("line 1: expected"));
        assert_eq!(err("keyword:   \n"), "line 1: empty keyword");
        assert!(err("\n\nregex: a*").starts_with("line 3: regex \"a*\" matches the empty"));
        assert!(err("disable: virus").starts_with("line 1: unknown detector"));
        let long = format!("keyword: {}", "x".repeat(MAX_MATCH_LEN + 1));
        assert!(err(&long).starts_with("line 1: keyword of 1025 bytes"));
        assert!(matches!(
            Rules::load("/nonexistent/rules"),
            Err(RulesError::Io(_))
        ));
    }

    /// Every detector, fed split at every index (two pieces) and byte by byte, finds the same
    /// as in one piece.
    #[test]
    fn matches_split_at_every_boundary() {
        let mut rules = Rules::default();
        rules.add_keyword("Confidential").unwrap();
        rules.add_regex(r"\bACME-[0-9]{6}\b").unwrap();
        let mut body = b"a 4111 1111 1111 1111 b 378282246310005; ssn 123-45-6789 ".to_vec();
        body.extend_from_slice(EICAR);
        body.extend_from_slice(b" x CONFIDENTIAL ACME-123456 5500-0000-0000-0004");
        let whole = scan(&rules, &body);
        assert_eq!(whole.len(), 7, "{whole:#?}");
        for i in 0..=body.len() {
            let mut s = Scanner::new(&rules);
            s.feed(&body[..i]);
            s.feed(&body[i..]);
            assert_eq!(s.finish(), whole, "split at {i}");
        }
        for i in (0..body.len()).step_by(7) {
            for j in i..body.len().min(i + 40) {
                let mut s = Scanner::new(&rules);
                s.feed(&body[..i]);
                s.feed(&[]);
                s.feed(&body[i..j]);
                s.feed(&body[j..]);
                assert_eq!(s.finish(), whole, "split at {i} and {j}");
            }
        }
        let mut s = Scanner::new(&rules);
        for b in &body {
            s.feed(std::slice::from_ref(b));
        }
        assert_eq!(s.finish(), whole, "byte by byte");
    }

    /// The window detectors scan the body in internal blocks: put each match across every
    /// block boundary position.
    #[test]
    fn matches_across_internal_block_boundaries() {
        let mut rules = Rules::default();
        rules.add_keyword("confidential").unwrap();
        rules.add_regex(r"\bACME-[0-9]{6}\b").unwrap();
        let big = format!("ACME-{}", "7".repeat(900)); // 905 bytes: under MAX_MATCH_LEN
        rules.add_regex("ACME-7+").unwrap();
        for needle in [
            EICAR,
            b"ConFidential".as_slice(),
            b" ACME-123456 ",
            big.as_bytes(),
        ] {
            let expected = scan(&rules, needle);
            assert!(!expected.is_empty());
            // Around the first block end and the second (after one compaction).
            for boundary in [MAX_BUFFER, 2 * MAX_BUFFER - TAIL] {
                // Every split of the short needles; for the 905-byte one, every 13th split
                // and the edges (each scan here is ~130 KB, so all 906 cost seconds).
                let ks: Vec<usize> = if needle.len() > 100 {
                    let mut v: Vec<usize> = (0..=needle.len()).step_by(13).collect();
                    v.extend([1, needle.len() - 1, needle.len()]);
                    v
                } else {
                    (0..=needle.len()).collect()
                };
                for k in ks {
                    let at = boundary - k;
                    let mut body = vec![b'.'; at];
                    body.extend_from_slice(needle);
                    body.extend_from_slice(b"....");
                    let got = scan(&rules, &body);
                    let shifted: Vec<_> = expected
                        .iter()
                        .map(|f| Finding {
                            offset: f.offset + at as u64,
                            ..f.clone()
                        })
                        .collect();
                    assert_eq!(got, shifted, "needle of {} at {at}", needle.len());
                }
            }
        }
    }

    #[test]
    fn bounded_memory_on_large_digit_heavy_input() {
        let mut rules = Rules::default();
        rules.add_keyword("needle").unwrap();
        rules.add_regex("[0-9]{3}-x").unwrap();
        let mut s = Scanner::new(&rules);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let alphabet = b"0123456789 -0123456789.\n";
        let mut chunk = vec![0u8; 1 << 20];
        // 8 MiB in debug builds (this module is compiled into three test binaries), 50 MiB in
        // release: either way far past the window, with piece sizes up to 300 KB.
        let rounds = if cfg!(debug_assertions) { 8 } else { 50 };
        for round in 0..rounds {
            for b in chunk.iter_mut() {
                *b = alphabet[(rng.next() % alphabet.len() as u64) as usize];
            }
            // Vary the piece sizes.
            let mut rest = &chunk[..];
            let mut n = 1 + round * 4099;
            while !rest.is_empty() {
                let take = n.min(rest.len());
                s.feed(&rest[..take]);
                rest = &rest[take..];
                n = n * 7 % 300_000 + 1;
                let w = s.window.as_ref().unwrap();
                assert!(w.buf.len() <= MAX_BUFFER && w.buf.capacity() <= MAX_BUFFER);
                let d = s.digits.as_ref().unwrap();
                assert!(d.pending.len() <= 8);
                assert!(s.sink.findings.len() <= MAX_FINDINGS);
            }
        }
        assert_eq!(s.bytes_scanned(), (rounds as u64) << 20);
        let total = s.total_findings();
        let (f, total2) = s.finish_with_total();
        assert!(f.len() <= MAX_FINDINGS && total2 >= total);
    }

    #[test]
    fn random_bodies_agree_with_one_piece() {
        let mut rules = Rules::default();
        rules.add_keyword("45").unwrap();
        let mut rng = Rng(42);
        let alphabet = b"0123456789 -.a";
        for _ in 0..200 {
            let len = (rng.next() % 300) as usize;
            let body: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
                .collect();
            let whole = scan(&rules, &body);
            let cut = (rng.next() % (len as u64 + 1)) as usize;
            let mut s = Scanner::new(&rules);
            s.feed(&body[..cut]);
            s.feed(&body[cut..]);
            assert_eq!(s.finish(), whole);
        }
    }

    #[test]
    fn findings_are_capped_but_counted() {
        let body = "123-45-6789 ".repeat(MAX_FINDINGS + 5);
        let rules = Rules::default();
        let mut s = Scanner::new(&rules);
        s.feed(body.as_bytes());
        let (f, total) = s.finish_with_total();
        assert_eq!(f.len(), MAX_FINDINGS);
        assert_eq!(total, MAX_FINDINGS as u64 + 5);
    }

    /// `cargo test --release -p icap-dlp-engine -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn throughput_64mib_clean() {
        let mut rng = Rng(7);
        let words = [
            "the ",
            "quick ",
            "brown ",
            "fox ",
            "<div class=\"x\"> ",
            "2024 ",
            "\n",
            "id=17 ",
        ];
        let mut text = Vec::with_capacity(64 << 20);
        while text.len() < 64 << 20 {
            text.extend_from_slice(words[(rng.next() % words.len() as u64) as usize].as_bytes());
        }
        let prose: Vec<u8> = b"lorem ipsum dolor sit amet, consectetur adipiscing elit. "
            .iter()
            .copied()
            .cycle()
            .take(64 << 20)
            .collect();
        let random: Vec<u8> = (0..(64 << 20) / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        let mut full = Rules::default();
        full.add_keyword("project bluebird").unwrap();
        full.add_regex(r"ACME-[0-9]{6}").unwrap();
        let bodies = [
            ("text with numbers", &text),
            ("prose, no digits", &prose),
            ("random bytes", &random),
        ];
        for (body_name, body) in bodies {
            for (rules_name, rules) in [("default", &Rules::default()), ("+keyword+regex", &full)] {
                let t = std::time::Instant::now();
                let mut s = Scanner::new(rules);
                for c in body.chunks(64 * 1024) {
                    s.feed(c);
                }
                let f = s.finish();
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "{body_name}, {rules_name}: {:.0} MB/s ({} findings)",
                    body.len() as f64 / secs / 1e6,
                    f.len()
                );
            }
        }
    }
}
