//! How a command's error is printed: its chain of causes in words, never a dump of the
//! SDK's structures, and a hint when the cause is a common first-run mistake.

use std::error::Error;

/// The lines printed for a failed command: `error: ...`, one `caused by: ...` per
/// cause that adds something, then a hint if one applies.
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut current: Option<&(dyn Error + 'static)> = Some(error);
    while let Some(e) = current {
        let text = scrub(&e.to_string());
        // The SDK's wrappers say little ("service error") and messages often repeat
        // their cause: print a cause only when the lines before do not hold it.
        let said = lines.iter().any(|l| l.contains(&text));
        if !said && !text.is_empty() && !GENERIC.contains(&text.as_str()) {
            lines.push(text);
        }
        current = e.source();
    }
    let mut out = String::new();
    for (n, line) in lines.iter().enumerate() {
        out.push_str(if n == 0 { "error: " } else { "  caused by: " });
        out.push_str(line);
        out.push('\n');
    }
    if let Some(hint) = hint(&lines.join("\n")) {
        out.push_str("hint: ");
        out.push_str(hint);
        out.push('\n');
    }
    out
}

/// What the SDK's outer error types print, which says nothing their cause does not.
const GENERIC: &[&str] = &[
    "service error",
    "dispatch failure",
    "failed to construct request",
    "response error",
    "timeout",
    "io error",
    "other",
];

/// The text without the SDK's Debug dumps: `DisplayErrorContext`, which error
/// messages of the library embed, ends with the whole error structure in parentheses,
/// e.g. `... (ServiceError(ServiceError { source: ..., raw: Response { ... } }))`.
///
/// ```text
/// no table: ResourceNotFoundException: x (ServiceError(ServiceError { a: 1 }))
/// no table: ResourceNotFoundException: x
/// ```
pub fn scrub(text: &str) -> String {
    const DUMPS: &[&str] = &[
        " (ServiceError(",
        " (DispatchFailure(",
        " (TimeoutError(",
        " (ResponseError(",
        " (ConstructionFailure(",
    ];
    let mut text = text.to_string();
    while let Some(start) = DUMPS.iter().filter_map(|d| text.find(d)).min() {
        let mut depth = 0usize;
        let mut end = text.len();
        for (i, c) in text[start + 1..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + 1 + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        text.replace_range(start..end, "");
    }
    text
}

/// A hint for a failure a newcomer meets first, recognised by its words.
fn hint(text: &str) -> Option<&'static str> {
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&[
        "did not answer",
        "Connection refused",
        "connection refused",
        "unreachable",
    ]) {
        Some(
            "is `delivery-app local` running? Start it in another terminal (or point \
             --kinesis-endpoint/--dynamodb-endpoint at your AWS, or use --real-aws), or run \
             everything at once with `delivery-app demo`",
        )
    } else if has(&["AccessDenied", "not authorized"]) {
        Some("docs/iam-policy.md lists every permission each command needs")
    } else if has(&["ResourceNotFoundException"]) && has(&["stream", "Stream"]) {
        Some("create the stream first: `delivery-app create-stream`")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);

    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Chain {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|c| c as &(dyn Error + 'static))
        }
    }

    #[test]
    fn debug_dumps_are_cut_out() {
        let cases = [
            (
                "ListShards on s: service error: ResourceNotFoundException: Stream s not found (ServiceError(ServiceError { source: ResourceNotFoundException(ResourceNotFoundException { message: Some(\"x\") }), raw: Response { status: 400 } }))",
                "ListShards on s: service error: ResourceNotFoundException: Stream s not found",
            ),
            (
                "DynamoDB endpoint http://x did not answer: dispatch failure: io error: Connection refused (os error 111) (DispatchFailure(DispatchFailure { source: ConnectorError { kind: Io } }))",
                "DynamoDB endpoint http://x did not answer: dispatch failure: io error: Connection refused (os error 111)",
            ),
            ("plain (with parentheses)", "plain (with parentheses)"),
        ];
        for (input, expected) in cases {
            assert_eq!(scrub(input), expected);
        }
    }

    #[test]
    fn the_chain_is_printed_in_words_with_a_hint() {
        let error = Chain(
            "cannot start the worker",
            Some(Box::new(Chain(
                "service error",
                Some(Box::new(Chain(
                    "DynamoDB endpoint http://127.0.0.1:8000 did not answer: Connection refused",
                    None,
                ))),
            ))),
        );
        let text = report(&error);
        assert_eq!(
            text.lines().take(2).collect::<Vec<_>>(),
            [
                "error: cannot start the worker",
                "  caused by: DynamoDB endpoint http://127.0.0.1:8000 did not answer: Connection refused",
            ]
        );
        assert!(
            text.lines()
                .nth(2)
                .unwrap()
                .starts_with("hint: is `delivery-app local` running?")
        );
        let denied = Chain(
            "TransactWriteItems on T was denied (AccessDeniedException: no)",
            None,
        );
        assert!(report(&denied).contains("docs/iam-policy.md"));
        assert_eq!(report(&Chain("fine", None)), "error: fine\n");
    }
}
