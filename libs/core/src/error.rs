//! Error messages for people: an error and its causes on one line.

use std::error::Error;

/// `error` and its causes joined by ": ", leaving out a cause whose text the line already
/// holds. Many errors (redis's, hyper's) print their source inside their own message and
/// return it from `source()` too, so anyhow's `{:#}` says "Connection refused (os error
/// 111): Connection refused (os error 111)".
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = inner.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug)]
    struct Wrapping {
        text: String,
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    }

    impl std::fmt::Display for Wrapping {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.text)
        }
    }

    impl std::error::Error for Wrapping {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source
                .as_deref()
                .map(|s| s as &(dyn std::error::Error + 'static))
        }
    }

    fn wrapping(text: &str, source: Option<Wrapping>) -> Wrapping {
        Wrapping {
            text: text.to_owned(),
            source: source.map(|s| Box::new(s) as Box<dyn std::error::Error + Send + Sync>),
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io_text = io.to_string();
        let redis_like = Wrapping {
            text: format!("failed to connect: {io_text}"),
            source: Some(Box::new(io)),
        };
        let outer = anyhow::Error::new(redis_like).context("cannot reach Redis");
        assert_eq!(
            format!("{outer:#}"),
            format!("cannot reach Redis: failed to connect: {io_text}: {io_text}")
        );
        assert_eq!(
            chain(outer.as_ref()),
            format!("cannot reach Redis: failed to connect: {io_text}")
        );
    }

    #[test]
    fn new_causes_are_all_kept_in_order() {
        let error = wrapping("a", Some(wrapping("b", Some(wrapping("c", None)))));
        assert_eq!(chain(&error), "a: b: c");
        let empty_middle = wrapping("a", Some(wrapping("", Some(wrapping("c", None)))));
        assert_eq!(chain(&empty_middle), "a: c");
    }
}
