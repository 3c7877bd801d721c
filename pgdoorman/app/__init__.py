"""The application (layer 4): the service tree (L{service}), the twistd plugin's options
(L{tap}), the C{pgdoorman} command (L{cli}), logging set-up and the SSH manhole."""
