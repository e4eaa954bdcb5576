"""The operator screen: a page served by the API at ``/ui`` (docs/UI.md).

Plain HTML, CSS and ES modules shipped in the package (``static/``): no build step and no
CDN, so the screen works on a line with no internet and a fresh install serves it as is.
"""
