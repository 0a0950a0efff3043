//! The fused AdamW step as Candle in-place ops on CPU parameters (`f32`/`f64`).
//!
//! [`crate::ml::optim::AdamW`] keeps the moments in plain buffers and calls these to
//! update a parameter's storage in place, from a dense gradient tensor or from gradient
//! rows of an embedding table. The element loops live in `adam.rs`.

use std::cell::{Cell, RefCell};

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Tensor, Var};

use super::activation::Real;
use super::adam::{adam_update, adam_update_rows, sum_of_squares, AdamCoefficients};

/// Sum of squares of a tensor's elements, in `f64`.
///
/// # Errors
/// Candle errors (off the CPU fast path).
pub(crate) fn tensor_sum_of_squares(t: &Tensor) -> candle_core::Result<f64> {
    if matches!(t.device(), Device::Cpu) {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let range = layout.contiguous_offsets();
            match (cpu, range) {
                (CpuStorage::F32(d), Some((a, b))) => return Ok(sum_of_squares(&d[a..b])),
                (CpuStorage::F64(d), Some((a, b))) => return Ok(sum_of_squares(&d[a..b])),
                _ => {}
            }
        }
    }
    t.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

/// The elements of a contiguous parameter storage, mutably.
fn param_slice<'a, T: Real>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("adamw-in-place needs a contiguous parameter")
    };
    match T::cpu_storage_mut(storage) {
        Some(data) => Ok(&mut data[start..end]),
        None => candle_core::bail!("adamw-in-place: parameter dtype differs from its moments"),
    }
}

/// The in-place AdamW update of one CPU parameter from a dense gradient.
struct DenseUpdate<'a, T> {
    m: RefCell<&'a mut [T]>,
    v: RefCell<&'a mut [T]>,
    coef: AdamCoefficients,
    /// Sum of squares of the gradient, filled by `cpu_fwd`.
    sum_sq: Cell<f64>,
}

/// Updates `var` in place from its dense gradient and moment buffers; returns the
/// gradient's sum of squares.
///
/// # Errors
/// When the variable or gradient is not a contiguous CPU tensor of type `T` of the
/// moments' size.
pub(crate) fn update_dense<T: Real>(
    var: &Var,
    grad: &Tensor,
    (m, v): (&mut [T], &mut [T]),
    coef: &AdamCoefficients,
) -> candle_core::Result<f64> {
    let grad = grad.contiguous()?;
    let (m, v) = (RefCell::new(m), RefCell::new(v));
    let op = DenseUpdate { m, v, coef: *coef, sum_sq: Cell::new(0.0) };
    var.as_tensor().inplace_op2(&grad, &op)?;
    Ok(op.sum_sq.get())
}

impl<T: Real> InplaceOp2 for DenseUpdate<'_, T> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let param = param_slice::<T>(s1, l1)?;
        let Some((g0, g1)) = l2.contiguous_offsets() else {
            candle_core::bail!("adamw-in-place needs a contiguous gradient")
        };
        let grad = &T::cpu_storage_as_slice(s2)?[g0..g1];
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        if grad.len() != param.len() || m.len() != param.len() || v.len() != param.len() {
            candle_core::bail!("adamw-in-place: parameter, gradient and moments differ in size")
        }
        self.sum_sq.set(adam_update(param, grad, &mut m, &mut v, &self.coef));
        Ok(())
    }
}

/// Gradient rows of a `(rows, width)` table: `ids` sorted and unique, `rows` holding one
/// row of `width` values per id (repeated ids of the input summed).
pub(crate) struct CompactRows<T> {
    ids: Vec<usize>,
    rows: Vec<T>,
    width: usize,
}

impl<T: Real> CompactRows<T> {
    /// Sums the gradient rows `rows` (`(ids.len(), width)`) per table row.
    ///
    /// Repeated ids are added in input order, as Candle's `index_add` does, so the sums
    /// match the dense gradient bit for bit.
    ///
    /// # Errors
    /// When `rows` is not `(ids.len(), width)` of type `T`, or an id is `table_rows` or
    /// more.
    pub(crate) fn new(ids: &[u32], rows: &Tensor, table_rows: usize) -> candle_core::Result<Self> {
        let (n, width) = rows.dims2()?;
        if n != ids.len() || ids.iter().any(|&id| id as usize >= table_rows) {
            candle_core::bail!("gradient rows do not match their {} ids or the table", ids.len())
        }
        let data: Vec<T> = rows.flatten_all()?.to_vec1()?;

        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| ids[i]);
        let (mut out_ids, mut out_rows) = (Vec::new(), Vec::with_capacity(n * width));
        for &i in &order {
            let row = &data[i * width..][..width];
            if out_ids.last() == Some(&(ids[i] as usize)) {
                let start = out_rows.len() - width;
                out_rows[start..].iter_mut().zip(row).for_each(|(acc, &x)| *acc += x);
            } else {
                out_ids.push(ids[i] as usize);
                out_rows.extend_from_slice(row);
            }
        }
        Ok(Self { ids: out_ids, rows: out_rows, width })
    }

    /// Sum of squares of the (summed) gradient rows.
    pub(crate) fn sum_of_squares(&self) -> f64 {
        sum_of_squares(&self.rows)
    }

    /// The dense `(table_rows, width)` gradient, for the tensor path.
    ///
    /// # Errors
    /// Candle errors.
    pub(crate) fn to_dense(&self, like: &Tensor) -> candle_core::Result<Tensor> {
        let ids: Vec<u32> = self.ids.iter().map(|&id| id as u32).collect();
        let ids = Tensor::new(ids, like.device())?;
        let rows = Tensor::from_slice(&self.rows, (self.ids.len(), self.width), like.device())?;
        like.zeros_like()?.index_add(&ids, &rows.to_dtype(like.dtype())?, 0)
    }
}

/// The in-place AdamW update of a CPU table from gradient rows.
struct RowsUpdate<'a, T> {
    m: RefCell<&'a mut [T]>,
    v: RefCell<&'a mut [T]>,
    grad: &'a CompactRows<T>,
    coef: AdamCoefficients,
}

/// Updates the table `var` in place from gradient rows (zero gradient on all other rows)
/// and its moment buffers: the same result as [`update_dense`] with the dense gradient.
///
/// # Errors
/// When the variable is not a contiguous CPU tensor of type `T` of the moments' size.
pub(crate) fn update_rows<T: Real>(
    var: &Var,
    grad: &CompactRows<T>,
    (m, v): (&mut [T], &mut [T]),
    coef: &AdamCoefficients,
) -> candle_core::Result<()> {
    let (m, v) = (RefCell::new(m), RefCell::new(v));
    var.as_tensor().inplace_op1(&RowsUpdate { m, v, grad, coef: *coef })
}

impl<T: Real> InplaceOp1 for RowsUpdate<'_, T> {
    fn name(&self) -> &'static str {
        "adamw-rows-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let param = param_slice::<T>(storage, layout)?;
        let (mut m, mut v) = (self.m.borrow_mut(), self.v.borrow_mut());
        let g = self.grad;
        if m.len() != param.len() || v.len() != param.len() || param.len() % g.width != 0 {
            candle_core::bail!("adamw-rows-in-place: table and moments differ in size")
        }
        adam_update_rows((param, &mut m, &mut v), (&g.ids, &g.rows), g.width, &self.coef);
        Ok(())
    }
}
