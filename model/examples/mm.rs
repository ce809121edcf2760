use candle_core::{Device, Tensor};
fn time<F: FnMut()>(name: &str, flops: f64, mut f: F) {
    f();
    let r = 10;
    let t = std::time::Instant::now();
    for _ in 0..r {
        f();
    }
    let dt = t.elapsed().as_secs_f64() / r as f64;
    println!(
        "{name:40} {:8.2} ms {:7.1} GFLOP/s",
        dt * 1e3,
        flops / dt / 1e9
    );
}
fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (2048, 512), &d).unwrap();
    let w = Tensor::randn(0f32, 1., (1536, 512), &d).unwrap();
    let g = Tensor::randn(0f32, 1., (2048, 1536), &d).unwrap();
    let f = 2.0 * 2048.0 * 512.0 * 1536.0;
    time("x @ w.t()  (fwd)", f, || {
        x.matmul(&w.t().unwrap()).unwrap();
    });
    time("g @ w      (dx)", f, || {
        g.matmul(&w).unwrap();
    });
    time("g.t() @ x  (dw)", f, || {
        g.t().unwrap().matmul(&x).unwrap();
    });
    time("x.t() @ g  (dw^T)", f, || {
        x.t().unwrap().matmul(&g).unwrap();
    });
    let q = Tensor::randn(0f32, 1., (8, 8, 256, 64), &d).unwrap();
    let k = Tensor::randn(0f32, 1., (8, 8, 256, 64), &d).unwrap();
    let a = Tensor::randn(0f32, 1., (8, 8, 256, 256), &d).unwrap();
    let fa = 2.0 * 64.0 * 256.0 * 256.0 * 64.0;
    time("q @ k.t() [64x256x64x256]", fa, || {
        q.matmul(&k.t().unwrap()).unwrap();
    });
    time("a @ v", fa, || {
        a.matmul(&k).unwrap();
    });
    time("a.t() @ q (dv)", fa, || {
        a.t().unwrap().matmul(&q).unwrap();
    });
    time("a @ k (dq)", fa, || {
        a.matmul(&k).unwrap();
    });
    let big = Tensor::randn(0f32, 1., (2048, 1376), &d).unwrap();
    time("add [2048x1376]", 2048.0 * 1376.0, || {
        (&big + &big).unwrap();
    });
    time("copy/contiguous of transpose", 2048.0 * 1376.0, || {
        big.t().unwrap().contiguous().unwrap();
    });
}
