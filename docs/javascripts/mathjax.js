// MathJax 2.7 (served by the site: mathjax/), configured for pymdownx.arithmatex's generic output; notebook pages
// add the $ delimiters of their markdown cells (mkdocs-jupyter's init_mathjax). Code and pre blocks are skipped.
window.MathJax = {
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  showMathMenu: false,
  messageStyle: "none"
};
// Material's instant navigation swaps pages without reloading: typeset each new one
document$.subscribe(() => {
  if (window.MathJax && window.MathJax.Hub) {
    window.MathJax.Hub.Queue(["Typeset", window.MathJax.Hub]);
  }
});
