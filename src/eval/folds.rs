//! Which domains each round of an evaluation tests, and with which CoSAM heads: a
//! leave-one-domain-out plan, or one round over the domains asked for.

use crate::model::TaskHeads;

use super::EvalError;

/// One round of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fold {
    /// The domains evaluated in this round.
    pub test: Vec<String>,
    /// The domains the heads of this round were trained on (what the report records).
    pub train: Vec<String>,
    /// Index of the head set serving this round in the sets given to [`plan_folds`];
    /// `None` when no prompt-free method runs.
    pub heads: Option<usize>,
}

/// What the user asked of the folds.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct FoldRequest {
    /// One round per domain, each held out from training.
    pub leave_one_domain_out: bool,
    /// Domains to test (empty: all of the task's).
    pub test_domains: Vec<String>,
    /// Domains the heads were trained on, for the report (without head sets).
    pub train_domains: Vec<String>,
}

impl FoldRequest {
    /// One round per domain, each held out from training.
    pub fn with_leave_one_domain_out(mut self, lodo: bool) -> Self {
        self.leave_one_domain_out = lodo;
        self
    }

    /// Domains to test (empty: all of the task's).
    pub fn with_test_domains(mut self, domains: Vec<String>) -> Self {
        self.test_domains = domains;
        self
    }

    /// Domains the heads were trained on, for the report.
    pub fn with_train_domains(mut self, domains: Vec<String>) -> Self {
        self.train_domains = domains;
        self
    }
}

/// Plans the rounds of an evaluation over `domains` (the task's, in dataset order).
///
/// With leave-one-domain-out heads (several sets, or
/// [`FoldRequest::leave_one_domain_out`]), each test domain is a round of its own with the
/// set that never saw it, and that set's training domains are what the report records;
/// one set (shipped heads) serves every round.
///
/// # Errors
/// [`EvalError::UnknownDomain`] for a requested domain the task does not have;
/// [`EvalError::NoHeadsForDomain`] when no head set holds a test domain out.
pub fn plan_folds(
    domains: &[String],
    request: &FoldRequest,
    head_sets: &[TaskHeads],
) -> Result<Vec<Fold>, EvalError> {
    let held_out: Vec<&[String]> = head_sets
        .iter()
        .map(|h| h.info.held_out_domains.as_slice())
        .collect();
    let trained: Vec<&[String]> = head_sets
        .iter()
        .map(|h| h.info.train_domains.as_slice())
        .collect();
    plan(domains, request, &held_out, &trained)
}

/// [`plan_folds`] on the head sets' held-out and training domains.
fn plan(
    domains: &[String],
    request: &FoldRequest,
    held_out: &[&[String]],
    trained: &[&[String]],
) -> Result<Vec<Fold>, EvalError> {
    for d in request.test_domains.iter().chain(&request.train_domains) {
        if !domains.contains(d) {
            return Err(EvalError::UnknownDomain {
                domain: d.clone(),
                domains: domains.to_vec(),
            });
        }
    }
    // (held-out domains, training domains) per round
    let rounds: Vec<(Vec<String>, Vec<String>)> = if request.leave_one_domain_out {
        domains
            .iter()
            .map(|d| {
                (
                    vec![d.clone()],
                    domains.iter().filter(|x| *x != d).cloned().collect(),
                )
            })
            .collect()
    } else {
        let test = if request.test_domains.is_empty() {
            domains.to_vec()
        } else {
            request.test_domains.clone()
        };
        vec![(test, request.train_domains.clone())]
    };
    let Some(first) = trained.first() else {
        return Ok(rounds
            .into_iter()
            .map(|(test, train)| Fold {
                test,
                train,
                heads: None,
            })
            .collect());
    };
    let per_domain = request.leave_one_domain_out || held_out.len() > 1;
    let mut folds = Vec::new();
    for (test, _) in rounds {
        if !per_domain {
            folds.push(Fold {
                test,
                train: first.to_vec(),
                heads: Some(0),
            });
            continue;
        }
        for d in test {
            let i = held_out
                .iter()
                .position(|h| h.contains(&d))
                .ok_or_else(|| EvalError::NoHeadsForDomain { domain: d.clone() })?;
            folds.push(Fold {
                test: vec![d],
                train: trained.get(i).map_or_else(Vec::new, |t| t.to_vec()),
                heads: Some(i),
            });
        }
    }
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn leave_one_domain_out_tests_each_domain_with_the_heads_that_never_saw_it() {
        let domains = names(&["a", "b", "c"]);
        let request = FoldRequest {
            leave_one_domain_out: true,
            ..FoldRequest::default()
        };
        let (ha, hb, hc) = (names(&["a"]), names(&["b"]), names(&["c"]));
        let (ta, tb, tc) = (names(&["b", "c"]), names(&["a", "c"]), names(&["a", "b"]));
        // the sets in another order than the domains
        let held: Vec<&[String]> = vec![&hc, &ha, &hb];
        let trained: Vec<&[String]> = vec![&tc, &ta, &tb];
        let folds = plan(&domains, &request, &held, &trained).unwrap();
        assert_eq!(
            folds,
            vec![
                Fold {
                    test: names(&["a"]),
                    train: ta.clone(),
                    heads: Some(1)
                },
                Fold {
                    test: names(&["b"]),
                    train: tb.clone(),
                    heads: Some(2)
                },
                Fold {
                    test: names(&["c"]),
                    train: tc.clone(),
                    heads: Some(0)
                },
            ]
        );
        let err = plan(&domains, &request, &held[..2], &trained[..2]).unwrap_err();
        assert!(matches!(err, EvalError::NoHeadsForDomain { ref domain } if domain == "b"));
    }

    #[test]
    fn without_heads_one_round_tests_the_asked_domains() {
        let domains = names(&["a", "b"]);
        let request = FoldRequest {
            test_domains: names(&["b"]),
            train_domains: names(&["a"]),
            ..FoldRequest::default()
        };
        assert_eq!(
            plan(&domains, &request, &[], &[]).unwrap(),
            vec![Fold {
                test: names(&["b"]),
                train: names(&["a"]),
                heads: None
            }]
        );
        let all = plan(&domains, &FoldRequest::default(), &[], &[]).unwrap();
        assert_eq!(all[0].test, domains);
        let bad = FoldRequest {
            test_domains: names(&["z"]),
            ..FoldRequest::default()
        };
        assert!(matches!(
            plan(&domains, &bad, &[], &[]),
            Err(EvalError::UnknownDomain { .. })
        ));
    }

    #[test]
    fn one_head_set_serves_every_domain_at_once() {
        let domains = names(&["a", "b"]);
        let t = names(&["a", "b"]);
        let h: Vec<String> = Vec::new();
        let folds = plan(&domains, &FoldRequest::default(), &[&h], &[&t]).unwrap();
        assert_eq!(
            folds,
            vec![Fold {
                test: domains.clone(),
                train: t.clone(),
                heads: Some(0)
            }]
        );
    }
}
