"""The SFPN neck inside other libraries' detectors.

Each integration is its own module so that importing :mod:`sfpn` never imports the host library:
``sfpn.integrations.torchvision`` needs torchvision, which the core package does not depend on.
"""
