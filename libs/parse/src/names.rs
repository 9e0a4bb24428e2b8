//! What is not a domain: file names (`invoice.zip`, `update.py`, `readme.md`) and antivirus
//! verdict names (`W32/Agent.CA!tr`, `Trojan-Downloader.O97M.Agent.CA`). Real `.zip` and `.py`
//! domains exist, so context decides (labelled README rule 3, case BR-18): a defanged token, a
//! URL host or an email domain is a domain; a bare token ending in a file extension is a file.

/// File extensions (lower case) that mark a token as a file name.
const FILE_EXTENSIONS: &[&str] = &[
    // documents
    "doc",
    "docx",
    "docm",
    "dot",
    "dotm",
    "xls",
    "xlsx",
    "xlsm",
    "xlsb",
    "xlt",
    "xltm",
    "xll",
    "ppt",
    "pptx",
    "pptm",
    "pps",
    "ppsx",
    "pdf",
    "rtf",
    "odt",
    "ods",
    "odp",
    "txt",
    "csv",
    "md",
    "rst",
    "log",
    "xml",
    "json",
    "yaml",
    "yml",
    "ini",
    "cfg",
    "conf",
    "ics",
    "vcf",
    "eml",
    "msg",
    "rpmsg",
    "one",
    "onepkg",
    "pub",
    "xps",
    "oxps",
    "epub",
    "mobileconfig",
    // web
    "htm",
    "html",
    "shtml",
    "xhtml",
    "mht",
    "mhtml",
    "svg",
    "php",
    "asp",
    "aspx",
    "jsp",
    "js",
    "mjs",
    "css",
    "swf",
    // scripts and executables
    "exe",
    "dll",
    "scr",
    "msi",
    "msix",
    "msp",
    "lnk",
    "url",
    "bat",
    "cmd",
    "ps1",
    "psm1",
    "psd1",
    "vbs",
    "vbe",
    "jse",
    "wsf",
    "wsh",
    "hta",
    "cpl",
    "sys",
    "drv",
    "ocx",
    "jar",
    "class",
    "py",
    "pyc",
    "pl",
    "rb",
    "sh",
    "bash",
    "elf",
    "bin",
    "so",
    "dylib",
    "apk",
    "ipa",
    "dmg",
    "pkg",
    "deb",
    "rpm",
    "appx",
    "appxbundle",
    "reg",
    "inf",
    "chm",
    "iqy",
    "slk",
    "wasm",
    "xlam",
    "ppam",
    "library-ms",
    "search-ms",
    "settingcontent-ms",
    // archives and disk images
    "zip",
    "rar",
    "7z",
    "gz",
    "tgz",
    "bz2",
    "xz",
    "tar",
    "cab",
    "iso",
    "img",
    "vhd",
    "vhdx",
    "arj",
    "lzh",
    "ace",
    "z",
    "zst",
    "uue",
    // media
    "png",
    "jpg",
    "jpeg",
    "gif",
    "bmp",
    "tif",
    "tiff",
    "ico",
    "webp",
    "heic",
    "mp3",
    "mp4",
    "wav",
    "avi",
    "mov",
    "mkv",
    "wmv",
    "ogg",
    "m4a",
];

/// Whether `ext` (without the dot, any case) is a file extension.
pub(crate) fn is_file_extension(ext: &str) -> bool {
    FILE_EXTENSIONS.iter().any(|e| e.eq_ignore_ascii_case(ext))
}

/// The regex alternation of every extension, longest first so `docx` wins over `doc`.
pub(crate) fn extension_alternation() -> String {
    let mut exts: Vec<&str> = FILE_EXTENSIONS.to_vec();
    exts.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    exts.iter()
        .map(|e| regex::escape(e))
        .collect::<Vec<_>>()
        .join("|")
}

/// Family prefixes of antivirus verdict names that no host name starts with.
const AV_PREFIXES_STRONG: &[&str] = &[
    "w32",
    "w64",
    "win32",
    "win64",
    "heur",
    "o97m",
    "x97m",
    "w97m",
    "msil",
    "vba",
    "trojandownloader",
    "trojandropper",
    "trojanspy",
    "hacktool",
    "riskware",
    "pua",
    "pup",
];

/// Family names that also occur as ordinary words: they mark an AV name only in a token
/// written with capitals (`Trojan.GenericKD`, `Email.Phishing.VA`), as verdicts are and
/// indicators rarely are.
const AV_WORDS_WEAK: &[&str] = &[
    "trojan",
    "troj",
    "backdoor",
    "worm",
    "virus",
    "adware",
    "exploit",
    "ransom",
    "spyware",
    "rootkit",
    "phishing",
    "generic",
    "generickd",
    "gen",
    "agent",
    "malware",
    "heuristic",
    "downloader",
    "dropper",
    "variant",
    "packed",
    "suspicious",
];

/// Whether `token` (a whitespace-delimited word holding a domain-like candidate at
/// `candidate_start..candidate_end`) reads as an antivirus verdict name: it starts with a
/// platform or family prefix (`W32.`, `HEUR:`), has a family word among its components and is
/// written with capitals (`Trojan-Downloader.O97M.Agent.CA`), or carries the `!` suffix or the
/// `Platform/Name` form AV engines use (`W32/Agent.CA!tr`).
pub(crate) fn is_av_name(token: &str, candidate_start: usize, candidate_end: usize) -> bool {
    let before = &token[..candidate_start];
    let after = &token[candidate_end..];
    if before.ends_with('/') || after.starts_with('!') {
        return true;
    }
    let first = token
        .split(['.', ':', '/', '-', '!', '_'])
        .find(|c| !c.is_empty())
        .unwrap_or_default();
    if AV_PREFIXES_STRONG
        .iter()
        .any(|p| p.eq_ignore_ascii_case(first))
    {
        return true;
    }
    let is_weak = |c: &str| {
        AV_WORDS_WEAK.iter().any(|w| {
            c.eq_ignore_ascii_case(w)
                || (c.len() > w.len()
                    && c.as_bytes()[w.len()] == b'-'
                    && c[..w.len()].eq_ignore_ascii_case(w))
        })
    };
    let capitals = token.bytes().any(|b| b.is_ascii_uppercase());
    let first_word = token
        .split(['.', ':', '/', '!', '_'])
        .next()
        .unwrap_or_default();
    let first_is_family = AV_WORDS_WEAK
        .iter()
        .any(|w| w.eq_ignore_ascii_case(first_word));
    if capitals
        && first_word
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_uppercase())
        && first_is_family
    {
        return true;
    }
    // Otherwise a family word counts only before an upper-case variant suffix (`.CA`, `.VA`):
    // host names are written in lower case.
    let tld = token[candidate_start..candidate_end]
        .rsplit('.')
        .next()
        .unwrap_or_default();
    let upper_suffix = !tld.bytes().any(|b| b.is_ascii_lowercase());
    upper_suffix && token.split(['.', ':', '/', '!', '_']).any(is_weak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        for ext in ["zip", "PY", "md", "sh", "docx", "tar", "gz"] {
            assert!(is_file_extension(ext), "{ext}");
        }
        for ext in ["com", "net", "org", "ca", "de", "io"] {
            assert!(!is_file_extension(ext), "{ext}");
        }
    }

    #[test]
    fn av_names() {
        let cases = [
            ("W32/Agent.CA!tr", "Agent.CA", true),
            (
                "Trojan-Downloader.O97M.Agent.CA",
                "Trojan-Downloader.O97M.Agent.CA",
                true,
            ),
            ("HEUR:Trojan.Win32.Generic", "Trojan.Win32.Generic", true),
            ("login.example.com", "login.example.com", false),
            ("js.example.com", "js.example.com", false),
            ("trojan-news.example.com", "trojan-news.example.com", false),
            ("Trojan.GenericKD.4711", "Trojan.GenericKD", true),
            ("Email.Phishing.VA", "Email.Phishing.VA", true),
            ("agent.example.com", "agent.example.com", false),
            (
                "Phishing-portal.example.com",
                "Phishing-portal.example.com",
                false,
            ),
        ];
        for (token, candidate, expected) in cases {
            let start = token.find(candidate).unwrap_or(0);
            assert_eq!(
                is_av_name(token, start, start + candidate.len()),
                expected,
                "{token}"
            );
        }
    }
}
