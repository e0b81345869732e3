use super::*;

fn run_with(options: Options, input: &[u8]) -> Vec<u8> {
    let mut filter = TermFilter::new(options);
    let mut out = Vec::new();
    filter.filter(input, &mut out);
    out
}

fn run(input: &[u8]) -> Vec<u8> {
    run_with(Options::default(), input)
}

/// Sequences that must never reach the terminal, each between two plain words.
const DROPPED: &[&[u8]] = &[
    b"\x1b]52;c;cHduZWQ=\x07",
    b"\x1b]52;c;cHduZWQ=\x1b\\",
    b"\x1b]52;c;?\x07",
    b"\x1b]52;;cHduZWQ=\x9c",
    b"\x9d52;c;cHduZWQ=\x07",
    b"\xc2\x9d52;c;cHduZWQ=\xc2\x9c",
    b"\x1b[21t",
    b"\x1b[20t",
    b"\x9b21t",
    b"\xc2\x9b21t",
    b"\x1b[21;1t",
    b"\x1b[>2;3t",
    b"\x1b[3;0;0t",
    b"\x1bP$qm\x1b\\",
    b"\x90$q\"p\x9c",
    b"\x1bP1;1|17/72756e0d\x1b\\",
    b"\x1bP+q6e6f;\r\x1b\\",
    b"\x1bP+p6b31=0d\x1b\\",
    b"\x1b]50;?\x07",
    b"\x1b]1337;RequestUpload=format=tgz\x07",
    b"\x1b]5522;type=read\x1b\\",
    b"\x1b]633;E;rm -rf ~\x07",
    b"\x1b]l\x07",
    b"\x1b_Ga=T,t=f;L2V0Yy9wYXNzd2Q=\x1b\\",
    b"\x9fGa=q\x9c",
    b"\x1b^private\x1b\\",
    b"\x1bXstring\x1b\\",
    b"\x1b[5i",
    b"\x1b[1$w",
    b"\x1b[1;1;1;1;1;1*y",
];

/// Sequences TUIs need: they pass unchanged.
const PASSED: &[&[u8]] = &[
    b"\x1b[6n",
    b"\x1b[c",
    b"\x1b[>c",
    b"\x1b[=c",
    b"\x1b[?2004h",
    b"\x1b[?1000h\x1b[?1006h",
    b"\x1b[?1049h\x1b[H\x1b[2J",
    b"\x1b[38;2;255;0;0mred\x1b[0m",
    b"\x1b[?2026$p",
    b"\x1b[?u\x1b[>1u",
    b"\x1b[>q",
    b"\x1b[14t\x1b[18t\x1b[22;0t\x1b[23;0t",
    b"\x1b]11;?\x07",
    b"\x1b]10;?\x1b\\",
    b"\x1b]4;1;?\x07",
    b"\x1b]8;;https://example.com/\xc3\xbc\x1b\\link\x1b]8;;\x1b\\",
    b"\x1b]0;my title\x07",
    b"\x1b]2;t\xc3\x9f\x07",
    b"\x1b]9;4;1;50\x07",
    b"\x1b]104\x07",
    b"\x1bP+q544e;636f6c6f7273\x1b\\",
    b"\x1bP=1s\x1b\\",
    b"\x1bPq#0;2;0;0;0#0!10~\x1b\\",
    b"\x1b7\x1b8\x1b(B\x1b=\x1bM",
    b"\x9b1m",
    b"Stra\xc3\x9fe \xc3\x9d \xc3\x9b \xc3\x90 \xe2\x80\x9c \xf0\x9f\x98\x80",
    b"\r\n\t\x08\x07",
];

fn framed(seq: &[u8]) -> Vec<u8> {
    [b"before|".as_slice(), seq, b"|after"].concat()
}

#[test]
fn drops_what_the_table_lists() {
    for seq in DROPPED {
        assert_eq!(
            run(&framed(seq)),
            b"before||after",
            "{:?}",
            String::from_utf8_lossy(seq)
        );
    }
}

#[test]
fn passes_what_tuis_need_unchanged() {
    for seq in PASSED {
        let input = framed(seq);
        assert_eq!(run(&input), input, "{:?}", String::from_utf8_lossy(seq));
    }
}

/// Every split point (and byte by byte) gives the same output as one piece.
fn assert_split_invariant(options: Options, input: &[u8]) {
    let whole = run_with(options, input);
    for at in 0..=input.len() {
        let mut filter = TermFilter::new(options);
        let mut out = Vec::new();
        filter.filter(&input[..at], &mut out);
        filter.filter(&input[at..], &mut out);
        assert_eq!(out, whole, "split at {at}");
    }
    let mut filter = TermFilter::new(options);
    let mut out = Vec::new();
    for b in input {
        filter.filter(std::slice::from_ref(b), &mut out);
        assert!(filter.held_len() <= XTGETTCAP_MAX);
    }
    assert_eq!(out, whole, "byte by byte");
}

#[test]
fn a_sequence_split_anywhere_is_judged_whole() {
    let mut input = Vec::new();
    for seq in DROPPED.iter().chain(PASSED) {
        input.extend_from_slice(&framed(seq));
    }
    assert_split_invariant(Options::default(), &input);
    let expected: Vec<u8> = DROPPED
        .iter()
        .map(|_| b"before||after".to_vec())
        .chain(PASSED.iter().map(|s| framed(s)))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(run(&input), expected);
    for options in [
        Options {
            clipboard_write: true,
            eight_bit: false,
        },
        Options {
            clipboard_write: false,
            eight_bit: true,
        },
    ] {
        assert_split_invariant(options, &input);
    }
}

/// `start`, 10,000 times `fill`, `end`: a sequence far longer than any real one.
fn over_long(start: &[u8], fill: u8, end: &[u8]) -> Vec<u8> {
    let mut sequence = start.to_vec();
    sequence.extend(std::iter::repeat_n(fill, 10_000));
    sequence.extend_from_slice(end);
    sequence
}

#[test]
fn over_long_sequences_are_dropped_not_held() {
    let csi = over_long(b"\x1b[", b'1', b"m");
    let osc = over_long(b"\x1b]", b'0', b";title\x07");
    let tcap = over_long(b"\x1bP+q", b'a', b"\x1b\\");
    let esc = over_long(b"\x1b", b' ', b"F");
    for input in [&csi, &osc, &tcap, &esc] {
        assert_eq!(run(&framed(input)), b"before||after");
    }
    for input in [csi, osc, tcap, esc] {
        let mut filter = TermFilter::new(Options::default());
        let mut out = Vec::new();
        for b in &input {
            filter.filter(std::slice::from_ref(b), &mut out);
            assert!(filter.held_len() <= XTGETTCAP_MAX);
        }
    }
    // A dropped string body of any length is discarded as it comes, never held.
    let mut body = b"\x1b]52;c;".to_vec();
    body.extend(std::iter::repeat_n(b'A', 1 << 20));
    let mut filter = TermFilter::new(Options::default());
    let mut out = Vec::new();
    filter.filter(&body, &mut out);
    assert!(filter.held_len() == 0 && out.is_empty());
    filter.filter(b"\x07ok", &mut out);
    assert_eq!(out, b"ok");
}

#[test]
fn strings_end_at_bel_st_can_sub_esc_and_c1() {
    // BEL, 7-bit ST and 8-bit ST end a dropped string; what follows is text.
    for end in [
        &b"\x07"[..],
        b"\x1b\\",
        b"\x9c",
        b"\xc2\x9c",
        b"\x18",
        b"\x1a",
    ] {
        let input = [b"\x1b]52;c;QQ==".as_slice(), end, b"text"].concat();
        assert_eq!(run(&input), b"text", "{end:?}");
    }
    // ESC (not ST) cuts a string off and starts the next sequence, which is judged too.
    assert_eq!(run(b"\x1b]52;c;QQ==\x1b[21tX"), b"X");
    assert_eq!(run(b"\x1b]2;ok\x1b[21tX"), b"\x1b]2;okX");
    assert_eq!(run(b"\x1b]2;ok\x1b[6nX"), b"\x1b]2;ok\x1b[6nX");
    // A C1 introducer inside a passed string ends it and is judged on its own.
    assert_eq!(run(b"\x1b]2;ok\xc2\x9b21tX"), b"\x1b]2;ok\xc2X");
    assert_eq!(run(b"\x1b]2;ok\x9d52;c;QQ==\x07X"), b"\x1b]2;okX");
    // tmux passthrough: the wrapped sequence is dropped with its wrapper.
    let tmux = b"\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\".as_slice();
    assert!(!run(tmux).windows(2).any(|w| w == b"52"), "{:?}", run(tmux));
    // CAN and SUB abort a CSI, which never reaches the terminal whole.
    assert_eq!(run(b"\x1b[21\x18t"), b"\x18t");
}

#[test]
fn c1_controls_in_utf8_and_8_bit_streams() {
    // Stray and UTF-8-encoded C1 introducers start sequences.
    assert_eq!(run(b"a\x9b21tb"), b"ab");
    assert_eq!(run(b"a\xc2\x9b21tb"), b"ab");
    assert_eq!(run(b"a\xc2\x9c\xc2\xa9b"), b"a\xc2\x9c\xc2\xa9b");
    assert_eq!(run(b"a\x9f G\x9cb"), b"ab");
    // A C1-range byte that continues a UTF-8 character is text.
    assert_eq!(run("Stra\u{df}e".as_bytes()), "Stra\u{df}e".as_bytes());
    assert_eq!(run(b"\xe2\x80\x9b21t"), b"\xe2\x80\x9b21t");
    // In an 8-bit charset every 0x80-0x9f byte is a control.
    let eight = Options {
        clipboard_write: false,
        eight_bit: true,
    };
    assert_eq!(run_with(eight, b"\xe2\x80\x9b21tb"), b"\xe2\x80b");
    assert_eq!(run_with(eight, b"\xc3\x9d52;c;QQ==\x07b"), b"\xc3b");
    // An introducer cut short by a non-ASCII byte is dropped; the byte is read afresh.
    assert_eq!(run(b"\x1b[2\xc3\xa9"), b"\xc3\xa9");
    assert_eq!(run(b"\x1b\x9b21t"), b"");
}

#[test]
fn clipboard_writes_pass_only_when_allowed_and_reads_never() {
    let allow = Options {
        clipboard_write: true,
        eight_bit: false,
    };
    let write = b"\x1b]52;c;cHduZWQ=\x07".as_slice();
    assert_eq!(run_with(allow, write), write);
    assert_eq!(
        run_with(allow, b"\x1b]52;;cHduZWQ=\x1b\\"),
        b"\x1b]52;;cHduZWQ=\x1b\\"
    );
    for read in [
        &b"\x1b]52;c;?\x07"[..],
        b"\x1b]52;?\x07",
        b"\x1b]52;c;?\x1b\\",
        b"\x9d52;p;?\x9c",
        b"\x1b]52\x07",
    ] {
        assert_eq!(run_with(allow, &framed(read)), b"before||after", "{read:?}");
    }
    assert_eq!(run(write), b"");
}

#[test]
fn locales() {
    for utf8 in [
        None,
        Some(""),
        Some("C"),
        Some("POSIX"),
        Some("en_US.UTF-8"),
        Some("de_DE.utf8@euro"),
    ] {
        assert!(!eight_bit_locale(utf8), "{utf8:?}");
    }
    for eight in ["en_US", "de_DE.ISO-8859-15@euro", "ru_RU.KOI8-R"] {
        assert!(eight_bit_locale(Some(eight)), "{eight}");
    }
}
