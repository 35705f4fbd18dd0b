"""The holder's side (issue 13): a personal wallet that talks to hospital servers and
decrypts on the holder's own device."""
