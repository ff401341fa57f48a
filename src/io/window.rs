//! CT display windows (DICOM WindowCenter/WindowWidth), a value type shared by the readers
//! and preprocessing.

use std::str::FromStr;

/// A window that cannot be built or parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    /// Zero, negative or non-finite width, or a non-finite center.
    #[error("invalid window center {center}, width {width}: width must be positive")]
    Invalid {
        /// Window center, HU.
        center: f64,
        /// Window width, HU.
        width: f64,
    },
    /// Neither a preset name nor `CENTER,WIDTH`.
    #[error("unknown window '{0}': use soft-tissue, bone, lung, brain or CENTER,WIDTH")]
    Unknown(String),
}

/// A display window on CT values, in Hounsfield units.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WindowLevel {
    center: f64,
    width: f64,
}

impl WindowLevel {
    /// Abdominal soft tissue, W 400 / L 40 HU.
    pub const SOFT_TISSUE: WindowLevel = WindowLevel {
        center: 40.0,
        width: 400.0,
    };
    /// Bone, W 1800 / L 400 HU.
    pub const BONE: WindowLevel = WindowLevel {
        center: 400.0,
        width: 1800.0,
    };
    /// Lung, W 1500 / L -600 HU.
    pub const LUNG: WindowLevel = WindowLevel {
        center: -600.0,
        width: 1500.0,
    };
    /// Brain, W 80 / L 40 HU.
    pub const BRAIN: WindowLevel = WindowLevel {
        center: 40.0,
        width: 80.0,
    };

    /// A window from its center and width, HU.
    ///
    /// # Errors
    /// [`WindowError::Invalid`] unless both are finite and the width positive.
    pub fn new(center: f64, width: f64) -> Result<WindowLevel, WindowError> {
        if center.is_finite() && width.is_finite() && width > 0.0 {
            Ok(WindowLevel { center, width })
        } else {
            Err(WindowError::Invalid { center, width })
        }
    }

    /// Window center, HU.
    pub fn center(&self) -> f64 {
        self.center
    }

    /// Window width, HU.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// Lowest and highest HU inside the window.
    pub fn bounds(&self) -> (f32, f32) {
        (
            (self.center - self.width / 2.0) as f32,
            (self.center + self.width / 2.0) as f32,
        )
    }
}

impl FromStr for WindowLevel {
    type Err = WindowError;

    /// `soft-tissue`, `bone`, `lung`, `brain`, or `CENTER,WIDTH` in HU.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "soft-tissue" | "soft_tissue" | "abdomen" => Ok(Self::SOFT_TISSUE),
            "bone" => Ok(Self::BONE),
            "lung" => Ok(Self::LUNG),
            "brain" => Ok(Self::BRAIN),
            other => {
                let mut parts = other.split(',').map(|p| p.trim().parse::<f64>());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Ok(c)), Some(Ok(w)), None) => WindowLevel::new(c, w),
                    _ => Err(WindowError::Unknown(s.to_string())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_parses_presets_and_numbers() {
        assert_eq!("bone".parse::<WindowLevel>().unwrap(), WindowLevel::BONE);
        let w: WindowLevel = "50,350".parse().unwrap();
        assert_eq!((w.center(), w.width()), (50.0, 350.0));
        assert!("50,-1".parse::<WindowLevel>().is_err());
        assert!("nonsense".parse::<WindowLevel>().is_err());
    }
}
