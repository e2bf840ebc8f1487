//! Abbreviations defined in the text itself, found with the Schwartz–Hearst algorithm
//! ("A simple algorithm for identifying abbreviation definitions in biomedical text", PSB 2003):
//! a short form in parentheses right after its long form, "programmed cell death protein 1
//! (PD-1)". The long form is the shortest run of words before the parenthesis whose characters
//! contain the short form's letters in order, the first one starting a word.

use medembed_corpus::clean::Abbreviation;

/// Every abbreviation defined in `text`, in order of definition; a short form defined twice keeps
/// its first long form.
pub fn find_abbreviations(text: &str, out: &mut Vec<Abbreviation>) {
    let mut search_from = 0;
    while let Some(open) = text[search_from..].find('(').map(|i| i + search_from) {
        search_from = open + 1;
        let Some(close) = text[open + 1..].find(')').map(|i| i + open + 1) else {
            break;
        };
        let inner = &text[open + 1..close];
        // "(PD-1; ref. 3)", "(PD-1, also …)": the short form is the part before the separator.
        let short = inner.split([';', ',']).next().unwrap_or("").trim();
        if !is_short_form_candidate(short) {
            continue;
        }
        let max_words = (short.chars().count() + 5).min(short.chars().count() * 2);
        let window = words_before(&text[..open], max_words);
        if let Some(long) = best_long_form(short, window)
            && is_valid_pair(short, long)
            && !out.iter().any(|a| a.short == short)
        {
            out.push(Abbreviation {
                short: short.to_string(),
                long: long.to_string(),
            });
        }
    }
}

fn is_short_form_candidate(s: &str) -> bool {
    let chars = s.chars().count();
    (2..=10).contains(&chars)
        && s.split_whitespace().count() <= 2
        && s.chars().next().is_some_and(char::is_alphanumeric)
        && s.chars().any(char::is_alphabetic)
}

/// The last `max_words` words of `before`, not reaching back over a sentence end or another
/// parenthesis.
fn words_before(before: &str, max_words: usize) -> &str {
    let before = before.trim_end();
    let mut start = before.len();
    let mut words = 0;
    for (i, c) in before.char_indices().rev() {
        if c == '(' || c == ')' || c == ';' || (c == '.' && before[i + 1..].starts_with(' ')) {
            break;
        }
        if c == ' ' {
            words += 1;
            if words == max_words {
                break;
            }
        }
        start = i;
    }
    &before[start..]
}

/// The core of Schwartz–Hearst: match the short form's characters right to left in the
/// candidate; the first character must start a word. Returns the long form (from that word on).
fn best_long_form<'a>(short: &str, candidate: &'a str) -> Option<&'a str> {
    let s: Vec<char> = short.chars().flat_map(char::to_lowercase).collect();
    let l: Vec<(usize, char)> = candidate
        .char_indices()
        .map(|(i, c)| (i, c.to_lowercase().next().unwrap_or(c)))
        .collect();
    let mut s_index = s.len() as isize - 1;
    let mut l_index = l.len() as isize - 1;
    while s_index >= 0 {
        let current = s[s_index as usize];
        if !current.is_alphanumeric() {
            s_index -= 1;
            continue;
        }
        loop {
            if l_index < 0 {
                return None;
            }
            let c = l[l_index as usize].1;
            let starts_word = l_index == 0 || !l[l_index as usize - 1].1.is_alphanumeric();
            if c == current && (s_index != 0 || starts_word) {
                break;
            }
            l_index -= 1;
        }
        l_index -= 1;
        s_index -= 1;
    }
    let matched_at = l[(l_index + 1) as usize].0;
    let start = candidate[..matched_at].rfind(' ').map_or(0, |i| i + 1);
    Some(candidate[start..].trim())
}

fn is_valid_pair(short: &str, long: &str) -> bool {
    long.chars().count() > short.chars().count()
        && !long
            .split(|c: char| !c.is_alphanumeric() && c != '-')
            .any(|w| w == short)
        && long.chars().next().is_some_and(char::is_alphanumeric)
}

/// Replaces later uses of each short form by its long form; the defining "(PD-1)" stays.
pub fn expand(text: &str, abbreviations: &[Abbreviation]) -> String {
    let mut out = text.to_string();
    for a in abbreviations {
        let defined = format!("({})", a.short);
        let Some(definition) = out.find(&defined) else {
            continue;
        };
        let tail_start = definition + defined.len();
        let mut tail = String::with_capacity(out.len() - tail_start);
        let rest = &out[tail_start..];
        let mut last = 0;
        for (i, _) in rest.match_indices(a.short.as_str()) {
            let before_ok = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric() && c != '-');
            let after_ok = rest[i + a.short.len()..]
                .chars()
                .next()
                .is_none_or(|c| !c.is_alphanumeric() && c != '-');
            if before_ok && after_ok {
                tail.push_str(&rest[last..i]);
                tail.push_str(&a.long);
                last = i + a.short.len();
            }
        }
        tail.push_str(&rest[last..]);
        out.truncate(tail_start);
        out.push_str(&tail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        find_abbreviations(text, &mut out);
        out.into_iter().map(|a| (a.short, a.long)).collect()
    }

    #[test]
    fn finds_the_classic_definition_shapes() {
        assert_eq!(
            found("Blockade of programmed cell death protein 1 (PD-1) restores T cells."),
            vec![("PD-1".into(), "programmed cell death protein 1".into())]
        );
        assert_eq!(
            found("in heat shock transcription factor (HSF) binding"),
            vec![("HSF".into(), "heat shock transcription factor".into())]
        );
        // Letters inside words count, the first must start a word.
        assert_eq!(
            found(
                "the hepatocyte growth factor (HGF) pathway and tumor necrosis factor alpha (TNF-alpha)"
            ),
            vec![
                ("HGF".into(), "hepatocyte growth factor".into()),
                ("TNF-alpha".into(), "tumor necrosis factor alpha".into())
            ]
        );
    }

    #[test]
    fn values_and_mismatches_are_not_abbreviations() {
        assert!(found("patients (n = 45) were enrolled in 2019 (2019)").is_empty());
        assert!(found("the response rate (ORR) improved").is_empty());
        assert!(found("was higher (P < 0.05)").is_empty());
    }

    #[test]
    fn expansion_replaces_later_uses_only() {
        let text =
            "Programmed death ligand 1 (PD-L1) is expressed. PD-L1 levels and anti-PD-L1x rose.";
        let mut abbreviations = Vec::new();
        find_abbreviations(text, &mut abbreviations);
        assert_eq!(
            expand(text, &abbreviations),
            "Programmed death ligand 1 (PD-L1) is expressed. Programmed death ligand 1 levels and anti-PD-L1x rose."
        );
    }
}
