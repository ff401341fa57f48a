//! The optional clean-up of final masks ([`Cleanup`]) and its text form for `--cleanup`.

use super::Connectivity;

/// Clean-up of a thresholded mask, in this order: keep the largest component, remove
/// small components, fill holes, opening, closing. The default does nothing.
/// [`crate::SegmenterOptions::with_cleanup`] applies it to every mask a segmenter returns
/// (`cosam segment --cleanup`); parse one from text with [`str::parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Cleanup {
    /// Keep only the largest component (per slice or of the volume).
    pub keep_largest: Option<Connectivity>,
    /// Remove components of fewer pixels than this.
    pub remove_small: Option<(Connectivity, usize)>,
    /// Fill holes in each slice.
    pub fill_holes: bool,
    /// Opening radius, pixels (0: none).
    pub open_px: u32,
    /// Closing radius, pixels (0: none).
    pub close_px: u32,
}

impl Cleanup {
    /// Keeps only the largest component.
    pub fn with_keep_largest(mut self, connectivity: Connectivity) -> Self {
        self.keep_largest = Some(connectivity);
        self
    }

    /// Removes components of fewer than `min_pixels` pixels.
    pub fn with_remove_small(mut self, connectivity: Connectivity, min_pixels: usize) -> Self {
        self.remove_small = Some((connectivity, min_pixels));
        self
    }

    /// Fills holes in each slice.
    pub fn with_fill_holes(mut self, fill: bool) -> Self {
        self.fill_holes = fill;
        self
    }

    /// Opens with a disk of `radius_px` pixels.
    pub fn with_open(mut self, radius_px: u32) -> Self {
        self.open_px = radius_px;
        self
    }

    /// Closes with a disk of `radius_px` pixels.
    pub fn with_close(mut self, radius_px: u32) -> Self {
        self.close_px = radius_px;
        self
    }

    /// True when the clean-up changes nothing.
    pub fn is_none(&self) -> bool {
        *self == Cleanup::default()
    }

    /// True when a step joins components across slices ([`Connectivity::Volumetric`]).
    pub fn is_volumetric(&self) -> bool {
        self.keep_largest == Some(Connectivity::Volumetric)
            || matches!(self.remove_small, Some((Connectivity::Volumetric, _)))
    }
}

impl std::fmt::Display for Cleanup {
    /// The text [`str::parse`] reads back: the steps in the order they run, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut steps: Vec<String> = Vec::new();
        if let Some(c) = self.keep_largest {
            steps.push(match c {
                Connectivity::Planar => "largest".into(),
                Connectivity::Volumetric => "largest3d".into(),
            });
        }
        if let Some((c, n)) = self.remove_small {
            steps.push(match c {
                Connectivity::Planar => format!("small:{n}"),
                Connectivity::Volumetric => format!("small3d:{n}"),
            });
        }
        if self.fill_holes {
            steps.push("holes".into());
        }
        if self.open_px > 0 {
            steps.push(format!("open:{}", self.open_px));
        }
        if self.close_px > 0 {
            steps.push(format!("close:{}", self.close_px));
        }
        if steps.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&steps.join(","))
        }
    }
}

/// Largest radius (pixels) `open:R` and `close:R` accept.
pub const MAX_CLEANUP_RADIUS_PX: u32 = 64;

impl std::str::FromStr for Cleanup {
    type Err = String;

    /// A comma-separated list of steps, each per slice: `largest` (keep the largest
    /// component), `small:N` (remove components under N pixels), `holes` (fill holes),
    /// `open:R` and `close:R` (disk radius R pixels, 1-64); `none` or an empty list for no
    /// clean-up. `largest3d` and `small3d:N` do the first two on the whole volume
    /// (26-connected components). The steps always run in the order of [`Cleanup`],
    /// whatever the order of the list.
    ///
    /// ```
    /// use cosam::post::{Cleanup, Connectivity};
    /// let c: Cleanup = "holes,largest".parse().unwrap();
    /// assert_eq!(c, Cleanup::default().with_fill_holes(true).with_keep_largest(Connectivity::Planar));
    /// assert_eq!(c.to_string(), "largest,holes");
    /// assert_eq!(c.to_string().parse::<Cleanup>().unwrap(), c);
    /// assert!("holes,blur".parse::<Cleanup>().unwrap_err().contains("blur"));
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut c = Cleanup::default();
        let number = |step: &str, v: &str, max: u64| -> Result<u64, String> {
            match v.trim().parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("'{step}': the number must be 1 to {max}")),
            }
        };
        // a step given per slice and per volume is a contradiction, not an override
        let set = |slot: &mut Option<Connectivity>, value: Connectivity, step: &str| match *slot {
            Some(old) if old != value => Err(format!(
                "'{step}' contradicts an earlier step: give the per-slice or the \
                     volume form, not both"
            )),
            _ => {
                *slot = Some(value);
                Ok(())
            }
        };
        for step in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let lower = step.to_ascii_lowercase();
            let (name, value) = match lower.split_once(':') {
                Some((n, v)) => (n, Some(v)),
                None => (lower.as_str(), None),
            };
            match (name, value) {
                ("none", None) => {}
                ("largest", None) => set(&mut c.keep_largest, Connectivity::Planar, step)?,
                ("largest3d", None) => set(&mut c.keep_largest, Connectivity::Volumetric, step)?,
                ("holes", None) => c.fill_holes = true,
                ("small" | "small3d", Some(v)) => {
                    let n = number(step, v, 1 << 32)?;
                    let n = usize::try_from(n).map_err(|_| format!("'{step}' is too large"))?;
                    let connectivity = if name == "small" {
                        Connectivity::Planar
                    } else {
                        Connectivity::Volumetric
                    };
                    let mut current = c.remove_small.map(|(k, _)| k);
                    set(&mut current, connectivity, step)?;
                    c.remove_small = Some((connectivity, n));
                }
                ("open", Some(v)) => {
                    c.open_px = number(step, v, u64::from(MAX_CLEANUP_RADIUS_PX))? as u32;
                }
                ("close", Some(v)) => {
                    c.close_px = number(step, v, u64::from(MAX_CLEANUP_RADIUS_PX))? as u32;
                }
                _ => {
                    return Err(format!(
                        "unknown clean-up step '{step}': use largest, largest3d, small:N, \
                         small3d:N, holes, open:R, close:R or none"
                    ))
                }
            }
        }
        Ok(c)
    }
}
