//! Dataset manifests: which cases exist, in which domain, with which label values.
//!
//! Two layouts are accepted (docs/dataset-manifest.md):
//! - a `cosam-dataset/1` JSON manifest listing cases (what `data/fetch` writes);
//! - a folder with one subfolder per domain, each in nnU-Net layout (`imagesTr/CASE_0000.nii.gz`,
//!   `labelsTr/CASE.nii.gz`, `dataset.json` with a `labels` map).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::EvalError;

/// One image with its reference label map.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Case {
    /// Unique id.
    pub id: String,
    /// Task name (e.g. `abdomen`, `brain`).
    pub task: String,
    /// Domain (site, scanner, synthetic shift).
    pub domain: String,
    /// Image: NIfTI, DICOM series folder or 2D image; relative paths are resolved
    /// against the manifest's folder.
    pub image: PathBuf,
    /// Reference label map on the same grid or an aligned one.
    pub label: PathBuf,
    /// Structure name to its value in the label map.
    pub labels: BTreeMap<String, u32>,
    /// Structures the reference would mark if the image held them, and does not: every
    /// slice is a negative for them in training data. `cosam eval` does not score them
    /// (Dice is undefined there).
    #[serde(default)]
    pub absent_labels: Vec<String>,
    /// True for generated domain shifts.
    #[serde(default)]
    pub synthetic: bool,
    /// Where the reference comes from (manual, atlas, model output).
    #[serde(default)]
    pub label_kind: String,
    /// How the spacing is known.
    #[serde(default)]
    pub spacing_source: String,
}

/// A set of cases.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// All cases, in manifest order.
    pub cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct ManifestFile {
    format: String,
    cases: Vec<Case>,
}

/// The manifest format this version reads.
pub const MANIFEST_FORMAT: &str = "cosam-dataset/1";

impl Dataset {
    /// Loads a manifest file or an nnU-Net style folder of domains.
    ///
    /// # Errors
    /// [`EvalError::Dataset`] when the file is unreadable or malformed. Missing image
    /// files are not checked here: they fail their own case during evaluation.
    pub fn load(path: &Path) -> Result<Dataset, EvalError> {
        if path.is_dir() {
            return Self::from_nnunet_domains(path);
        }
        let bad = |reason: String| EvalError::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let file: ManifestFile =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a dataset manifest: {e}")))?;
        if file.format != MANIFEST_FORMAT {
            return Err(bad(format!(
                "format '{}', expected '{MANIFEST_FORMAT}'",
                file.format
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut seen = std::collections::HashSet::new();
        let mut cases = Vec::with_capacity(file.cases.len());
        for mut case in file.cases {
            if !seen.insert(case.id.clone()) {
                return Err(bad(format!("case id '{}' appears twice", case.id)));
            }
            if let Some(s) = case
                .absent_labels
                .iter()
                .find(|s| case.labels.contains_key(*s))
            {
                return Err(bad(format!(
                    "case '{}' lists '{s}' in both labels and absent_labels",
                    case.id
                )));
            }
            case.image = base.join(&case.image);
            case.label = base.join(&case.label);
            cases.push(case);
        }
        Ok(Dataset { cases })
    }

    fn from_nnunet_domains(root: &Path) -> Result<Dataset, EvalError> {
        let bad = |path: &Path, reason: String| EvalError::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        let mut domains: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| bad(root, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("imagesTr").is_dir())
            .collect();
        domains.sort();
        if domains.is_empty() {
            return Err(bad(root, "no domain folder with imagesTr/ inside".into()));
        }
        let task = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut cases = Vec::new();
        for dir in domains {
            let domain = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let labels = nnunet_labels(&dir.join("dataset.json"))?;
            let mut images: Vec<PathBuf> = std::fs::read_dir(dir.join("imagesTr"))
                .map_err(|e| bad(&dir, format!("cannot list imagesTr: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with("_0000.nii.gz"))
                .collect();
            images.sort();
            for image in images {
                let name = image
                    .file_name()
                    .map(|n| n.to_string_lossy().replace("_0000.nii.gz", ""))
                    .unwrap_or_default();
                cases.push(Case {
                    id: format!("{domain}/{name}"),
                    task: task.clone(),
                    domain: domain.clone(),
                    label: dir.join("labelsTr").join(format!("{name}.nii.gz")),
                    image,
                    labels: labels.clone(),
                    absent_labels: Vec::new(),
                    synthetic: false,
                    label_kind: "nnU-Net labelsTr".into(),
                    spacing_source: "image header".into(),
                });
            }
        }
        Ok(Dataset { cases })
    }

    /// The cases of one task, optionally restricted to some domains.
    pub fn select(&self, task: &str, domains: Option<&[String]>) -> Vec<&Case> {
        self.cases
            .iter()
            .filter(|c| c.task == task)
            .filter(|c| domains.is_none_or(|d| d.iter().any(|x| x == &c.domain)))
            .collect()
    }

    /// Task names, sorted.
    pub fn tasks(&self) -> Vec<String> {
        let mut t: Vec<String> = self.cases.iter().map(|c| c.task.clone()).collect();
        t.sort();
        t.dedup();
        t
    }

    /// Domains of a task, in first-appearance order.
    pub fn domains(&self, task: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for c in self.cases.iter().filter(|c| c.task == task) {
            if !out.contains(&c.domain) {
                out.push(c.domain.clone());
            }
        }
        out
    }
}

/// nnU-Net v2 `dataset.json` labels: `{"labels": {"background": 0, "liver": 1}}`.
fn nnunet_labels(path: &Path) -> Result<BTreeMap<String, u32>, EvalError> {
    let bad = |reason: String| EvalError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v["labels"]
        .as_object()
        .ok_or_else(|| bad("no \"labels\" object".into()))?;
    let mut labels = BTreeMap::new();
    for (name, value) in map {
        let value = value
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| bad(format!("label '{name}' has no integer value")))?;
        if value != 0 {
            labels.insert(name.clone(), value);
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_resolve_against_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.json");
        std::fs::write(
            &m,
            r#"{"format":"cosam-dataset/1","cases":[{"id":"a","task":"t","domain":"d1",
            "image":"x/img.nii.gz","label":"x/lab.nii.gz","labels":{"liver":5}}]}"#,
        )
        .unwrap();
        let d = Dataset::load(&m).unwrap();
        assert_eq!(d.cases[0].image, dir.path().join("x/img.nii.gz"));
        assert_eq!(d.select("t", None).len(), 1);
        assert_eq!(d.select("t", Some(&["d2".to_string()])).len(), 0);
    }

    #[test]
    fn duplicate_ids_contradictory_labels_and_unknown_formats_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.json");
        let case = r#"{"id":"a","task":"t","domain":"d","image":"i","label":"l","labels":{}}"#;
        std::fs::write(
            &m,
            format!(r#"{{"format":"cosam-dataset/1","cases":[{case},{case}]}}"#),
        )
        .unwrap();
        assert!(Dataset::load(&m)
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        std::fs::write(
            &m,
            r#"{"format":"cosam-dataset/1","cases":[{"id":"a","task":"t","domain":"d",
            "image":"i","label":"l","labels":{"liver":1},"absent_labels":["liver"]}]}"#,
        )
        .unwrap();
        assert!(Dataset::load(&m)
            .unwrap_err()
            .to_string()
            .contains("'liver' in both labels and absent_labels"));
        std::fs::write(&m, r#"{"format":"other/9","cases":[]}"#).unwrap();
        assert!(Dataset::load(&m)
            .unwrap_err()
            .to_string()
            .contains("format 'other/9'"));
    }

    #[test]
    fn nnunet_folders_become_domains() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["siteA", "siteB"] {
            let p = dir.path().join(d);
            std::fs::create_dir_all(p.join("imagesTr")).unwrap();
            std::fs::create_dir_all(p.join("labelsTr")).unwrap();
            std::fs::write(p.join("imagesTr/case1_0000.nii.gz"), b"").unwrap();
            std::fs::write(
                p.join("dataset.json"),
                r#"{"labels":{"background":0,"prostate":1}}"#,
            )
            .unwrap();
        }
        let ds = Dataset::load(dir.path()).unwrap();
        assert_eq!(ds.cases.len(), 2);
        assert_eq!(ds.cases[1].domain, "siteB");
        assert_eq!(
            ds.cases[1].label,
            dir.path().join("siteB/labelsTr/case1.nii.gz")
        );
        assert_eq!(ds.cases[0].labels.get("prostate"), Some(&1));
    }
}
