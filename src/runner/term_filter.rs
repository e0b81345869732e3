//! What of the agent's terminal output may reach the caller's terminal
//! (docs/threat-model.md row 2).
//!
//! A terminal answers some control sequences by typing a reply into its own input; when the
//! reply carries text the program chose, the agent can make the owner's shell read a command
//! line after the run. Others act outside the screen (the clipboard, key bindings, files).
//! The relay passes the agent's output through this filter, a streaming parser that follows
//! the ECMA-48 grammar the way xterm and VTE do and drops, whole, every sequence below. All
//! other bytes pass unchanged and in order.
//!
//! | sequence | dropped because |
//! |---|---|
//! | OSC 52 (clipboard) | writes the owner's clipboard; `OSC 52;c;?` makes the terminal type it back. `--allow-clipboard-write` lets writes through, never reads |
//! | `CSI 20 t`, `CSI 21 t` (icon/title report) | reply is the title, which the agent sets (OSC 0/1/2) |
//! | other `CSI Ps t` but 8, 11, 13-16, 18, 19, 22, 23 | window moves, iconify, raise, resize by lines |
//! | `DCS $ q` (DECRQSS) and every DCS but sixel, synchronized update and checked XTGETTCAP | DECRQSS replies echo the request on some terminals; DECUDK/XTSETTCAP rebind keys; tmux passthrough smuggles any sequence to the outer terminal |
//! | XTGETTCAP (`DCS + q`) unless its body is hex digits and `;` | the reply echoes the request (hex only is harmless: no Enter) |
//! | OSC numbers not listed below (50 font, 1337 iTerm2, 5113/5522 kitty files and clipboard, 7, 133, 633, 99, ...) | font query echoes an agent-set name; file transfer; command-line marks a terminal may re-run |
//! | APC, PM, SOS (kitty graphics reads files, ...) | no TUI the agent runs needs them |
//! | `CSI ... i` (media copy), `CSI $ w`, `CSI * y`, `CSI $ u`, `CSI & u`, `CSI # \|` | printer pipe, state and screen-content reports |
//!
//! Passed: every other CSI (cursor position and device attribute queries, DECRQM, modes such
//! as bracketed paste, mouse tracking and the alternate screen, kitty keyboard), plain ESC
//! sequences, OSC 0/1/2 (title: nothing can report it), 4, 5, 8 (hyperlinks), 9, 10-19 (colour
//! queries reply with colours), 22, 104, 105, 110-119, 777, sixel and `DCS =1 s`/`=2 s`.
//!
//! Both introducer forms count: 7-bit (`ESC [`, `ESC ]`, `ESC P`, `ESC X`, `ESC ^`, `ESC _`)
//! and 8-bit C1 (0x9b, 0x9d, 0x90, 0x98, 0x9e, 0x9f). In a UTF-8 stream a byte 0x80-0x9f that
//! continues a character is text (so "ß" stays intact), while a stray one and the UTF-8
//! encoding of a C1 control (0xc2 0x80-0x9f) are controls; with a caller locale in another
//! charset every 0x80-0x9f byte is a control. Where terminals differ, the filter takes the
//! reading that ends text sooner and starts a sequence sooner: dropping a little more never
//! helps the agent, while a sequence the filter reads as text could reach the terminal.
//! Strings end at BEL, ST (`ESC \`, 0x9c), CAN, SUB, ESC or any C1 control.
//!
//! At most [`HEADER_MAX`] bytes of an unfinished sequence are held back (across reads, so a
//! sequence split anywhere is judged whole); a longer one is dropped. String bodies that pass
//! are streamed, dropped ones discarded as they arrive: nothing grows without bound.
#![forbid(unsafe_code)]

/// The longest sequence head held back while it is being judged.
pub const HEADER_MAX: usize = 256;
/// The longest XTGETTCAP request held back to check its body.
const XTGETTCAP_MAX: usize = 1024;

const BEL: u8 = 0x07;
const CAN: u8 = 0x18;
const SUB: u8 = 0x1a;
const ESC: u8 = 0x1b;
const ST_C1: u8 = 0x9c;

/// How a string (OSC, DCS, APC, PM, SOS) body is treated.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Fate {
    /// Streamed to the terminal.
    Pass,
    /// Discarded.
    Drop,
    /// Held back (bounded) until its end: XTGETTCAP, released only with a hex body.
    Check,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum State {
    Ground,
    /// 0xc2 held: with 0x80-0x9f it is a C1 control encoded in UTF-8.
    GroundC2,
    /// ESC and intermediates held.
    Escape,
    /// A CSI being held until its final byte.
    Csi,
    /// A CSI longer than HEADER_MAX: dropped up to its final byte.
    CsiDiscard,
    /// An OSC number being held.
    OscNumber,
    /// OSC 52 with clipboard writes allowed: held until the data shows write or read.
    Osc52,
    /// A DCS head (parameters, intermediates) being held until its final byte.
    DcsHead,
    Body(Fate),
    /// ESC inside a body: ST if a backslash follows.
    BodyEsc(Fate),
}

/// Options of the filter, from the run's flags and the caller's locale.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Pass OSC 52 clipboard writes (never reads).
    pub clipboard_write: bool,
    /// The caller's terminal speaks an 8-bit charset: every 0x80-0x9f byte is a C1 control.
    pub eight_bit: bool,
}

/// The streaming filter; one per run.
pub struct TermFilter {
    options: Options,
    state: State,
    /// The unfinished sequence, not yet written (at most HEADER_MAX, or XTGETTCAP_MAX).
    held: Vec<u8>,
    /// Length of the introducer at the start of `held` (1 for C1, 2 for ESC x).
    intro: usize,
    /// UTF-8 continuation bytes still expected.
    utf8_pending: u8,
    /// The previous byte was 0xc2: a following 0x80-0x9f is an encoded C1 control.
    after_c2: bool,
}

impl TermFilter {
    pub fn new(options: Options) -> TermFilter {
        TermFilter {
            options,
            state: State::Ground,
            held: Vec::with_capacity(HEADER_MAX),
            intro: 0,
            utf8_pending: 0,
            after_c2: false,
        }
    }

    /// Filters the next piece of output, appending what may reach the terminal to `out`.
    pub fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < input.len() {
            let passed = match self.state {
                State::Ground => self.text_run(&input[i..]),
                State::Body(Fate::Pass) => plain_run(&input[i..]),
                _ => 0,
            };
            out.extend_from_slice(&input[i..i + passed]);
            i += passed;
            if i < input.len() {
                self.byte(input[i], out);
                i += 1;
            }
        }
    }

    /// How many bytes from the start of `input` are text that needs no more than the UTF-8
    /// decoder (the common case, done in one tight loop).
    fn text_run(&mut self, input: &[u8]) -> usize {
        if self.options.eight_bit || self.after_c2 {
            return plain_run(input);
        }
        let mut n = 0;
        while n < input.len() {
            if self.utf8_pending == 0 {
                // ASCII runs are the bulk of any output.
                n += ascii_run(&input[n..]);
                if n == input.len() {
                    break;
                }
            }
            let b = input[n];
            match b {
                ESC | 0xc2 => break,
                0x00..=0x7f => self.utf8_pending = 0,
                0x80..=0xbf if self.utf8_pending > 0 => self.utf8_pending -= 1,
                0x80..=0x9f => break,
                0xa0..=0xbf | 0xc0 | 0xc1 | 0xf5..=0xff => {}
                0xc3..=0xdf => self.utf8_pending = 1,
                0xe0..=0xef => self.utf8_pending = 2,
                0xf0..=0xf4 => self.utf8_pending = 3,
            }
            n += 1;
        }
        n
    }

    /// Bytes held back right now (for the bound test).
    #[cfg(test)]
    fn held_len(&self) -> usize {
        self.held.len()
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Ground => self.ground(b, out),
            State::GroundC2 => self.ground_c2(b, out),
            State::Escape => self.escape(b, out),
            State::Csi => self.csi(b, out),
            State::CsiDiscard => self.csi_discard(b, out),
            State::OscNumber => self.osc_number(b, out),
            State::Osc52 => self.osc52(b, out),
            State::DcsHead => self.dcs_head(b, out),
            State::Body(fate) => self.body(fate, b, out),
            State::BodyEsc(fate) => self.body_esc(fate, b, out),
        }
    }

    /// Whether `b` acts as a C1 control at this point of the stream (updating the UTF-8
    /// decoder).
    fn is_c1(&mut self, b: u8) -> bool {
        if self.options.eight_bit {
            return (0x80..=0x9f).contains(&b);
        }
        let after_c2 = std::mem::take(&mut self.after_c2);
        match b {
            0x00..=0x7f => {
                self.utf8_pending = 0;
                false
            }
            0x80..=0xbf if self.utf8_pending > 0 => {
                self.utf8_pending -= 1;
                after_c2 && b <= 0x9f
            }
            // Not part of a character: an 8-bit control to any terminal that reads one.
            0x80..=0xbf => b <= 0x9f,
            _ => {
                self.utf8_pending = match b {
                    0xc2..=0xdf => 1,
                    0xe0..=0xef => 2,
                    0xf0..=0xf4 => 3,
                    _ => 0,
                };
                self.after_c2 = b == 0xc2;
                false
            }
        }
    }

    fn reset_decoder(&mut self) {
        self.utf8_pending = 0;
        self.after_c2 = false;
    }

    fn back_to_ground(&mut self) {
        self.held.clear();
        self.reset_decoder();
        self.state = State::Ground;
    }

    /// Holds `b`; false (and nothing held any more) when the head grew too long.
    fn hold(&mut self, b: u8) -> bool {
        if self.held.len() >= HEADER_MAX {
            self.held.clear();
            return false;
        }
        self.held.push(b);
        true
    }

    fn ground(&mut self, b: u8, out: &mut Vec<u8>) {
        if b == ESC {
            self.start(&[ESC], State::Escape);
        } else if b == 0xc2 && self.utf8_pending == 0 && !self.options.eight_bit {
            self.start(&[b], State::GroundC2);
        } else if self.is_c1(b) {
            self.c1(&[b], out);
        } else {
            out.push(b);
        }
    }

    fn ground_c2(&mut self, b: u8, out: &mut Vec<u8>) {
        self.back_to_ground();
        if (0x80..=0x9f).contains(&b) {
            self.c1(&[0xc2, b], out);
        } else {
            out.push(0xc2);
            self.is_c1(0xc2);
            self.ground(b, out);
        }
    }

    /// Starts a sequence whose introducer is `intro`.
    fn start(&mut self, intro: &[u8], state: State) {
        self.held.clear();
        self.held.extend_from_slice(intro);
        self.intro = intro.len();
        self.reset_decoder();
        self.state = state;
    }

    /// A C1 control in ground state: `intro` is the byte, or 0xc2 and the byte.
    fn c1(&mut self, intro: &[u8], out: &mut Vec<u8>) {
        match intro[intro.len() - 1] {
            0x9b => self.start(intro, State::Csi),
            0x9d => self.start(intro, State::OscNumber),
            0x90 => self.start(intro, State::DcsHead),
            0x98 | 0x9e | 0x9f => self.start(&[], State::Body(Fate::Drop)),
            _ => out.extend_from_slice(intro),
        }
    }

    /// After ESC: intermediates, then a final byte that is either a whole escape sequence
    /// or the 7-bit form of an introducer.
    fn escape(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            ESC => self.start(&[ESC], State::Escape),
            CAN | SUB => {
                self.back_to_ground();
                out.push(b);
            }
            // C0 controls run in place, DEL is ignored, intermediates collect.
            0x00..=0x2f | 0x7f => {
                if !self.hold(b) {
                    self.state = State::CsiDiscard;
                }
            }
            0x30..=0x7e if self.held.len() == 1 => match b {
                b'[' => self.start(&[ESC, b], State::Csi),
                b']' => self.start(&[ESC, b], State::OscNumber),
                b'P' => self.start(&[ESC, b], State::DcsHead),
                b'X' | b'^' | b'_' => self.start(&[], State::Body(Fate::Drop)),
                _ => self.emit_held_and(b, out),
            },
            0x30..=0x7e => self.emit_held_and(b, out),
            // Not part of any escape sequence: the ESC is dropped, the byte read afresh.
            _ => self.abort_and_reread(b, out),
        }
    }

    fn emit_held_and(&mut self, b: u8, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        out.push(b);
        self.back_to_ground();
    }

    /// Drops the unfinished sequence (the terminal never sees its introducer) and reads `b`
    /// as if it came first.
    fn abort_and_reread(&mut self, b: u8, out: &mut Vec<u8>) {
        self.back_to_ground();
        self.ground(b, out);
    }

    fn csi(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            ESC => self.start(&[ESC], State::Escape),
            CAN | SUB => {
                self.back_to_ground();
                out.push(b);
            }
            0x00..=0x3f | 0x7f => {
                if !self.hold(b) {
                    self.state = State::CsiDiscard;
                }
            }
            0x40..=0x7e => {
                self.held.push(b);
                if csi_allowed(&self.held[self.intro..]) {
                    out.extend_from_slice(&self.held);
                }
                self.back_to_ground();
            }
            _ => self.abort_and_reread(b, out),
        }
    }

    fn csi_discard(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            ESC => self.start(&[ESC], State::Escape),
            CAN | SUB | 0x40..=0x7e => self.back_to_ground(),
            0x80..=0xff => self.abort_and_reread(b, out),
            _ => {}
        }
    }

    fn osc_number(&mut self, b: u8, out: &mut Vec<u8>) {
        if b.is_ascii_digit() {
            if !self.hold(b) {
                self.state = State::Body(Fate::Drop);
            }
            return;
        }
        let number = std::str::from_utf8(&self.held[self.intro..])
            .ok()
            .filter(|digits| !digits.is_empty() && digits.len() <= 5)
            .and_then(|digits| digits.parse::<u32>().ok());
        let fate = match number {
            Some(52) if self.options.clipboard_write && b == b';' => {
                self.held.push(b);
                self.state = State::Osc52;
                return;
            }
            Some(n) if osc_allowed(n) => Fate::Pass,
            _ => Fate::Drop,
        };
        if fate == Fate::Pass {
            out.extend_from_slice(&self.held);
        }
        self.held.clear();
        self.state = State::Body(fate);
        self.body(fate, b, out);
    }

    /// `OSC 52 ; Pc ; Pd`: a write when Pd does not start with '?'.
    fn osc52(&mut self, b: u8, out: &mut Vec<u8>) {
        let selections = self.held[self.intro + 3..].contains(&b';');
        match b {
            b'a'..=b'z' | b'0'..=b'9' if !selections => {
                if !self.hold(b) {
                    self.state = State::Body(Fate::Drop);
                }
            }
            b';' if !selections => {
                self.held.push(b);
            }
            // The first byte of the data decides.
            0x20..=0x7e if selections && b != b'?' => {
                out.extend_from_slice(&self.held);
                self.held.clear();
                self.state = State::Body(Fate::Pass);
                self.body(Fate::Pass, b, out);
            }
            _ => {
                self.held.clear();
                self.state = State::Body(Fate::Drop);
                self.body(Fate::Drop, b, out);
            }
        }
    }

    fn dcs_head(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            0x20..=0x3f | 0x00..=0x06 | 0x08..=0x17 | 0x19 | 0x1c..=0x1f => {
                if !self.hold(b) {
                    self.state = State::Body(Fate::Drop);
                }
            }
            0x40..=0x7e => {
                self.held.push(b);
                let fate = dcs_fate(&self.held[self.intro..]);
                match fate {
                    Fate::Pass => {
                        out.extend_from_slice(&self.held);
                        self.held.clear();
                    }
                    Fate::Drop => self.held.clear(),
                    Fate::Check => {}
                }
                self.state = State::Body(fate);
            }
            _ => {
                self.held.clear();
                self.state = State::Body(Fate::Drop);
                self.body(Fate::Drop, b, out);
            }
        }
    }

    fn body(&mut self, fate: Fate, b: u8, out: &mut Vec<u8>) {
        match b {
            BEL | CAN | SUB => self.finish(fate, &[b], out),
            ESC => self.state = State::BodyEsc(fate),
            _ if self.is_c1(b) => {
                if b == ST_C1 {
                    self.finish(fate, &[b], out);
                } else {
                    // Any other C1 control ends the string and starts its own sequence.
                    self.finish(fate, &[], out);
                    self.c1(&[b], out);
                }
            }
            _ => match fate {
                Fate::Pass => out.push(b),
                Fate::Drop => {}
                Fate::Check => {
                    let hex = b.is_ascii_hexdigit() || b == b';';
                    if !hex || self.held.len() >= XTGETTCAP_MAX {
                        self.held.clear();
                        self.state = State::Body(Fate::Drop);
                    } else {
                        self.held.push(b);
                    }
                }
            },
        }
    }

    fn body_esc(&mut self, fate: Fate, b: u8, out: &mut Vec<u8>) {
        if b == b'\\' {
            self.finish(fate, &[ESC, b], out);
        } else {
            // The string is cut off; the ESC starts a new sequence.
            self.finish(fate, &[], out);
            self.start(&[ESC], State::Escape);
            self.escape(b, out);
        }
    }

    /// The string ended with `terminator` (empty: cut off by the next sequence).
    fn finish(&mut self, fate: Fate, terminator: &[u8], out: &mut Vec<u8>) {
        match fate {
            Fate::Pass => out.extend_from_slice(terminator),
            Fate::Check if !terminator.is_empty() => {
                out.extend_from_slice(&self.held);
                out.extend_from_slice(terminator);
            }
            Fate::Check | Fate::Drop => {}
        }
        self.back_to_ground();
    }
}

/// How many bytes from the start of `input` are ASCII other than ESC; eight at a time.
fn ascii_run(input: &[u8]) -> usize {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut n = 0;
    for chunk in input.chunks_exact(8) {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
        let esc = word ^ (ONES * u64::from(ESC));
        // A zero byte in `esc` is an ESC in `word`.
        let has_esc = esc.wrapping_sub(ONES) & !esc & HIGH;
        if (word & HIGH) | has_esc != 0 {
            break;
        }
        n += 8;
    }
    n + input[n..]
        .iter()
        .position(|&b| b == ESC || b >= 0x80)
        .unwrap_or(input.len() - n)
}

/// How many bytes from the start of `input` are plain ASCII text (no ESC, no C1 control).
fn plain_run(input: &[u8]) -> usize {
    input
        .iter()
        .position(|&b| !(0x20..0x7f).contains(&b))
        .unwrap_or(input.len())
}

/// OSC numbers that pass: titles, colours (queries reply with colours only), hyperlinks,
/// notifications, pointer shape.
fn osc_allowed(number: u32) -> bool {
    matches!(number, 0..=2 | 4 | 5 | 8 | 9 | 10..=19 | 22 | 104 | 105 | 110..=119 | 777)
}

/// `seq`: a CSI after its introducer, final byte last.
fn csi_allowed(seq: &[u8]) -> bool {
    let Some((&last, rest)) = seq.split_last() else {
        return false;
    };
    if !matches!(last, b't' | b'w' | b'y' | b'u' | b'|' | b'i') {
        return true;
    }
    // C0 controls inside run in place; they take no part in the meaning.
    let params: Vec<u8> = rest
        .iter()
        .copied()
        .filter(|b| (0x30..=0x3f).contains(b))
        .collect();
    let inter: Vec<u8> = rest
        .iter()
        .copied()
        .filter(|b| (0x20..=0x2f).contains(b))
        .collect();
    match (inter.as_slice(), last) {
        (b"", b't') => window_op_allowed(&params),
        (b"$", b'w') | (b"*", b'y') | (b"$", b'u') | (b"&", b'u') | (b"#", b'|') => false,
        (_, b'i') => false,
        _ => true,
    }
}

/// XTWINOPS that pass: size reports (numbers only), resize in pixels... and the title
/// stack; never the title/icon reports (20, 21) or window moves.
fn window_op_allowed(params: &[u8]) -> bool {
    let first = params.split(|&b| b == b';').next().unwrap_or_default();
    let number = std::str::from_utf8(first)
        .ok()
        .filter(|d| !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok());
    matches!(number, Some(8 | 11 | 13..=16 | 18 | 19 | 22 | 23))
}

/// `head`: a DCS after its introducer, final byte last.
fn dcs_fate(head: &[u8]) -> Fate {
    let Some((&last, rest)) = head.split_last() else {
        return Fate::Drop;
    };
    let numeric = rest.iter().all(|&b| b.is_ascii_digit() || b == b';');
    match (rest, last) {
        // Sixel graphics.
        (_, b'q') if numeric => Fate::Pass,
        // XTGETTCAP: the body is checked.
        (b"+", b'q') => Fate::Check,
        // Synchronized update (begin, end).
        (b"=1" | b"=2", b's') => Fate::Pass,
        _ => Fate::Drop,
    }
}

/// Whether a locale (the first set of LC_ALL, LC_CTYPE, LANG) names an 8-bit charset, in
/// which a terminal may read every byte 0x80-0x9f as a C1 control. Unset, C and POSIX count
/// as UTF-8: terminals today are.
pub fn eight_bit_locale(locale: Option<&str>) -> bool {
    let Some(locale) = locale.filter(|l| !l.is_empty()) else {
        return false;
    };
    let lower = locale.to_ascii_lowercase();
    let charset_part = lower.split('@').next().unwrap_or_default();
    !(matches!(charset_part, "c" | "posix")
        || charset_part.ends_with(".utf-8")
        || charset_part.ends_with(".utf8"))
}

#[cfg(test)]
mod tests;
