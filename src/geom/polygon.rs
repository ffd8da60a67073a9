//! Convex polygons in a plane (output-grid pixels or tangent-plane arcsec): area, clipping,
//! bounding boxes. Used for exposure footprints in `plan` and, later, pixel overlaps in drizzle.
//!
//! Only convex polygons are supported: detector footprints and pixel quadrilaterals are convex.

use serde::{Deserialize, Serialize};

/// A convex polygon given by its vertices `(x, y)` in order (either orientation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Polygon {
    pub vertices: Vec<[f64; 2]>,
}

/// An axis-aligned box `[x0, x1) x [y0, y1)` in the plane.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
}

impl BBox {
    /// Width times height (0 for an empty box).
    pub fn area(&self) -> f64 {
        (self.x1 - self.x0).max(0.0) * (self.y1 - self.y0).max(0.0)
    }
    /// The smallest box holding both.
    pub fn union(&self, o: &BBox) -> BBox {
        BBox { x0: self.x0.min(o.x0), y0: self.y0.min(o.y0), x1: self.x1.max(o.x1), y1: self.y1.max(o.y1) }
    }
    /// The overlap of both (may be empty: check `area() > 0`).
    pub fn intersect(&self, o: &BBox) -> BBox {
        BBox { x0: self.x0.max(o.x0), y0: self.y0.max(o.y0), x1: self.x1.min(o.x1), y1: self.y1.min(o.y1) }
    }
}

impl Polygon {
    /// A polygon from vertices.
    pub fn new(vertices: Vec<[f64; 2]>) -> Self {
        Polygon { vertices }
    }

    /// An axis-aligned rectangle.
    pub fn rect(b: &BBox) -> Self {
        Polygon::new(vec![[b.x0, b.y0], [b.x1, b.y0], [b.x1, b.y1], [b.x0, b.y1]])
    }

    /// Signed area by the shoelace formula (positive for counter-clockwise vertices).
    pub fn signed_area(&self) -> f64 {
        let n = self.vertices.len();
        if n < 3 {
            return 0.0;
        }
        let mut s = 0.0;
        for i in 0..n {
            let [x0, y0] = self.vertices[i];
            let [x1, y1] = self.vertices[(i + 1) % n];
            s += x0 * y1 - x1 * y0;
        }
        0.5 * s
    }

    /// Unsigned area.
    pub fn area(&self) -> f64 {
        self.signed_area().abs()
    }

    /// Bounding box of the vertices.
    pub fn bbox(&self) -> BBox {
        let mut b = BBox { x0: f64::INFINITY, y0: f64::INFINITY, x1: f64::NEG_INFINITY, y1: f64::NEG_INFINITY };
        for &[x, y] in &self.vertices {
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x);
            b.y1 = b.y1.max(y);
        }
        b
    }

    /// The intersection with another convex polygon (Sutherland–Hodgman clipping of `self` by `clip`).
    /// Returns an empty polygon when they do not overlap.
    pub fn intersect(&self, clip: &Polygon) -> Polygon {
        let orient = clip.signed_area().signum();
        if orient == 0.0 {
            return Polygon::new(vec![]);
        }
        let mut out = self.vertices.clone();
        let m = clip.vertices.len();
        for i in 0..m {
            if out.is_empty() {
                break;
            }
            let a = clip.vertices[i];
            let b = clip.vertices[(i + 1) % m];
            // inside = left of a->b for a counter-clockwise clip polygon
            let side = |p: [f64; 2]| orient * ((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]));
            let input = std::mem::take(&mut out);
            let n = input.len();
            for j in 0..n {
                let p = input[j];
                let q = input[(j + 1) % n];
                let (sp, sq) = (side(p), side(q));
                if sp >= 0.0 {
                    out.push(p);
                }
                if (sp >= 0.0) != (sq >= 0.0) {
                    let t = sp / (sp - sq);
                    out.push([p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]);
                }
            }
        }
        Polygon::new(out)
    }

    /// Whether a point lies inside (or on the edge of) the convex polygon.
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let n = self.vertices.len();
        if n < 3 {
            return false;
        }
        let orient = self.signed_area().signum();
        (0..n).all(|i| {
            let a = self.vertices[i];
            let b = self.vertices[(i + 1) % n];
            orient * ((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0])) >= -1e-12
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_square_area_and_overlap_by_hand() {
        let a = Polygon::rect(&BBox { x0: 0.0, y0: 0.0, x1: 2.0, y1: 2.0 });
        let b = Polygon::rect(&BBox { x0: 1.0, y0: 1.5, x1: 3.0, y1: 4.0 });
        assert_eq!(a.area(), 4.0);
        // overlap [1,2] x [1.5,2] = 0.5
        assert!((a.intersect(&b).area() - 0.5).abs() < 1e-12);
        let far = Polygon::rect(&BBox { x0: 5.0, y0: 5.0, x1: 6.0, y1: 6.0 });
        assert_eq!(a.intersect(&far).area(), 0.0);
    }

    #[test]
    fn rotated_square_in_square_overlap() {
        // a diamond with vertices on the midpoints of the unit square's edges has area 1/2
        let sq = Polygon::rect(&BBox { x0: 0.0, y0: 0.0, x1: 1.0, y1: 1.0 });
        let diamond = Polygon::new(vec![[0.5, -0.5], [1.5, 0.5], [0.5, 1.5], [-0.5, 0.5]]);
        // diamond area 2; clipped to the unit square it is the square minus 4 corner triangles of 1/8
        assert!((diamond.area() - 2.0).abs() < 1e-12);
        assert!((diamond.intersect(&sq).area() - 1.0).abs() < 1e-12);
        // clockwise clip polygon gives the same result
        let cw = Polygon::new(sq.vertices.iter().rev().cloned().collect());
        assert!((diamond.intersect(&cw).area() - 1.0).abs() < 1e-12);
        assert!(sq.contains(0.5, 0.5) && !sq.contains(1.5, 0.5));
    }
}
